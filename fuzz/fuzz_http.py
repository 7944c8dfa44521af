"""Fuzz the HTTP/1.1 request parser and the server side of the opening handshake.

    python fuzz/fuzz_http.py fuzz/seeds/http -runs=200000

The input is the byte stream a client sends. Checked:

* ``RequestParser.feed`` / ``next_request`` raise nothing but ``InvalidMessage`` (and its
  subclasses, such as ``MessageTooBig``);
* the stream fed in one piece and fed in small chunks (of ``1 + data[0] % 16`` bytes, so the
  seeds stay plain HTTP requests) gives the same number of requests and the same error type;
* ``ServerHandshake().process_request(request)`` raises nothing but ``InvalidHandshake``
  subclasses, for every request parsed.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from fullduplex.protocol import exceptions, handshake, http11


def parse(chunks: list[bytes]) -> tuple[list[object], str | None]:
    parser = http11.RequestParser()
    requests: list[object] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (request := parser.next_request()) is not None:
                requests.append(request)
    except exceptions.InvalidMessage as exc:
        return requests, type(exc).__name__
    return requests, None


def TestOneInput(data: bytes) -> None:
    requests, error = parse([data])
    size = 1 + data[0] % 16 if data else 1
    chunked, chunked_error = parse([data[i : i + size] for i in range(0, len(data), size)])
    assert (len(chunked), chunked_error) == (len(requests), error), (chunked_error, error)
    for request in requests:
        with contextlib.suppress(exceptions.InvalidHandshake):
            handshake.ServerHandshake().process_request(request)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
