# A container for fullduplex (docs/deploy.md). Not built in CI: docker cannot run on the
# machine this was written on, so treat it as a starting point and build it once yourself:
#   docker build -t fullduplex . && docker run -p 8000:8000 fullduplex
FROM python:3.11-slim

# A C compiler for the masking accelerator (_speedups.c); removed after the build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[redis,speed]' \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y

RUN useradd --system --uid 10001 fullduplex
USER fullduplex

EXPOSE 8000
# Inside a container the app must listen on every interface; the proxy in front (nginx, a
# cloud load balancer) is then not 127.0.0.1: name its address or network in
# FORWARDED_ALLOW_IPS (read by `fullduplex serve`), e.g. 10.0.0.0/8.
ENV FORWARDED_ALLOW_IPS=127.0.0.1
# Docker's health check hits /healthz; orchestrators should probe /readyz for traffic.
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
# exec form: SIGTERM from `docker stop` reaches fullduplex, which closes WebSockets with 1001.
CMD ["fullduplex", "serve", "--host", "0.0.0.0", "--port", "8000", "--metrics"]
