"""One ``/metrics`` for several worker processes: the worker that is scraped sums them all.

With ``--workers N`` every process accepts on the same port (SO_REUSEPORT), so a scrape lands
on one worker chosen by the kernel. Each worker keeps its figures as plain integers (see
:mod:`~fullduplex.metrics.collector`), which prometheus-client's multiprocess mode cannot
read: that mode stores each metric in a memory-mapped file and sums the files, and it works
only with prometheus-client's own metric objects (a lock and a file write per ``inc()``), not
with custom collectors. So instead:

* each worker listens on a Unix socket ``<dir>/<pid>.sock`` and answers a connection with its
  own exposition text;
* the worker that gets the HTTP scrape connects to every other socket in ``<dir>`` at once,
  parses each answer with prometheus-client's text parser, and sums the samples that share a
  name and labels (:func:`merge`); ``fullduplex_metrics_processes`` then counts the workers
  that answered.

Every figure is read fresh at scrape time, nothing is written while serving. A worker that
died leaves a socket nobody accepts on: it is removed at the next scrape. Its counters go with
it, so a sum can go down, which Prometheus' ``rate()`` reads as a counter reset (as it does
when a single-process server restarts).

The directory comes from the ``FULLDUPLEX_METRICS_DIR`` environment variable, which the
supervisor (``fullduplex serve --workers N``) sets for its workers with
:func:`prepare_directory`; or from ``mount(app, workers_dir=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ENV_DIR", "MAX_FAMILIES", "WorkerPeers", "merge", "prepare_directory"]

logger = logging.getLogger("fullduplex.metrics")

#: The environment variable naming the directory of the workers' sockets.
ENV_DIR = "FULLDUPLEX_METRICS_DIR"
#: Families merged by taking the largest value instead of the sum (a lag is not additive).
MAX_FAMILIES = frozenset({"fullduplex_redis_lag_seconds"})
#: Seconds the scraped worker waits for each other worker's figures.
DEFAULT_PEER_TIMEOUT = 2.0
#: Bytes of exposition text read from one worker at most (a few KiB is usual).
MAX_PEER_TEXT = 16 * 2**20


def prepare_directory(directory: str | None = None) -> str:
    """Create (or empty) the workers' socket directory and export it to child processes.

    A supervisor calls this once before starting its workers; they inherit the environment.

    Args:
        directory: the directory; None reuses ``$FULLDUPLEX_METRICS_DIR`` if set, else makes a
            new temporary one.

    Returns:
        The directory.
    """
    path = directory or os.environ.get(ENV_DIR) or tempfile.mkdtemp(prefix="fullduplex-metrics-")
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.sock"):
        stale.unlink(missing_ok=True)
    os.environ[ENV_DIR] = path
    return path


class WorkerPeers:
    """This worker's socket in the shared directory, and the scrape of the others.

    Args:
        directory: the shared directory.
        render: returns this worker's exposition text.
        timeout: seconds to wait for each other worker.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        render: Callable[[], bytes],
        *,
        timeout: float = DEFAULT_PEER_TIMEOUT,
    ) -> None:
        #: The shared directory.
        self.directory = Path(directory)
        #: This worker's socket.
        self.path = self.directory / f"{os.getpid()}.sock"
        self.timeout = timeout
        self._render = render
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen on this worker's socket."""
        if self._server is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._answer, str(self.path))

    async def close(self) -> None:
        """Stop listening and remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self.path.unlink(missing_ok=True)
            await server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._render())
            await writer.drain()
        except (ConnectionError, OSError):  # pragma: no cover - the scraper went away
            pass
        finally:
            writer.close()

    async def gather(self) -> list[str]:
        """The exposition texts of the other workers that answer."""
        others = [p for p in self.directory.glob("*.sock") if p != self.path]
        texts = await asyncio.gather(*(self._ask(p) for p in others))
        return [text for text in texts if text is not None]

    async def _ask(self, path: Path) -> str | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=MAX_PEER_TEXT), self.timeout
            )
        except (ConnectionRefusedError, FileNotFoundError):
            # Nobody listens: the worker died without removing its socket.
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        except (asyncio.TimeoutError, OSError) as exc:
            logger.warning("metrics of worker %s unavailable: %s", path.stem, exc)
            return None
        try:
            data = await asyncio.wait_for(reader.read(MAX_PEER_TEXT), self.timeout)
        except (asyncio.TimeoutError, OSError) as exc:
            logger.warning("metrics of worker %s unavailable: %s", path.stem, exc)
            return None
        finally:
            writer.close()
        return data.decode()


def merge(texts: Iterable[str]) -> list[Metric]:
    """Sum exposition texts: samples with the same name and labels are added up.

    Families in :data:`MAX_FAMILIES` take the largest value instead. Samples keep the order
    in which they first appear (histogram buckets stay in order).
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            samples = values[family.name]
            largest = family.name in MAX_FAMILIES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = samples.get(key)
                if old is None:
                    samples[key] = sample.value
                elif largest:
                    samples[key] = max(old, sample.value)
                else:
                    samples[key] = old + sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class Merged:
    """Metric families already built, as a collector for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """The families."""
        return iter(self._families)
