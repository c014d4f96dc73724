"""Running a worker process: broker, topics, store, Faust worker, and a bounded shutdown."""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import faust

from stylestream.schemas.errors import StylestreamError
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.group_offsets import commit_missing_offsets
from stylestream.streams.logs import logging_config
from stylestream.streams.settings import EMBEDDED, Settings
from stylestream.streams.store import StyleStore
from stylestream.streams.topics import declare_topics

log = logging.getLogger(__name__)

WORKER_FILE = "worker.json"
# Allocations between young-generation collections; CPython's default is 700.
GC_YOUNG_THRESHOLD = 10_000


class BoundedWorker(faust.Worker):
    """A Faust worker that exits at most `shutdown_timeout` seconds after SIGTERM or SIGINT.

    A Faust worker whose agent keeps crashing can ignore SIGTERM for a long time. So a watchdog
    thread ends the process when the graceful stop takes too long.
    """

    def __init__(self, *args: Any, shutdown_timeout: float, on_stopped: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdown_timeout = shutdown_timeout
        self.on_stopped = on_stopped

    def _schedule_shutdown(self, signal: Any) -> None:
        if not self._signal_stop_time:
            timer = threading.Timer(self.shutdown_timeout, self._force_exit)
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)

    def _force_exit(self) -> None:
        log.error("Worker did not stop within %.0f s of the stop signal; exiting now", self.shutdown_timeout)
        logging.shutdown()
        os._exit(3)

    def on_worker_shutdown(self) -> None:
        if self.on_stopped is not None:
            self.on_stopped(self.loop)


def worker_file(settings: Settings) -> Path:
    """Return the file where a running worker records its HTTP address."""
    return settings.data_dir / WORKER_FILE


def read_worker_info(settings: Settings) -> dict[str, Any] | None:
    """Return the running worker's record (pid, web_host, web_port, broker) for this data_dir, or None."""
    path = worker_file(settings)
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (ValueError, KeyError, OSError):
        return None
    return info


def read_worker_address(settings: Settings) -> str | None:
    """Return http://host:port of the running worker for this data_dir, or None."""
    info = read_worker_info(settings)
    return f"http://{info['web_host']}:{info['web_port']}" if info else None


def tune_garbage_collector() -> None:
    """Keep the objects that exist now out of garbage collection, and collect young objects less often.

    The worker's heap contains the torch, Qdrant and Faust modules, and each full collection walked them all,
    which halved the rate of the user path in `benchmarks/table_memory.py` (measured with CPython 3.11).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_worker(settings: Settings) -> int:
    """Run a worker until it is stopped; start an embedded broker first when `broker` is 'embedded'."""
    with ExitStack() as cleanup:
        if settings.broker == EMBEDDED:
            kafka = EmbeddedKafka(work_dir=settings.data_dir / "kafka")
            kafka.start()
            cleanup.callback(kafka.stop)
            settings = settings.model_copy(update={"broker": kafka.url})
            log.info("Using the embedded broker at %s", kafka.url)
        if settings.web_port == 0:
            settings = settings.model_copy(update={"web_port": free_port()})
        declare_topics(settings)
        commit_missing_offsets(settings)

        from stylestream.streams.app import StyleStreamApp

        store = StyleStore(settings)
        worker_app = StyleStreamApp(settings, store)
        cleanup.callback(worker_app.store.close)
        cleanup.callback(worker_app.record_lookup.close)

        path = worker_file(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "web_host": settings.web_host, "web_port": settings.web_port, "broker": settings.broker}))
        cleanup.callback(lambda: path.unlink(missing_ok=True))

        def final_flush(loop: Any) -> None:
            try:
                written = loop.run_until_complete(worker_app.sink.flush(force=True))
                log.info("Final flush wrote %d users", written)
            except (RuntimeError, StylestreamError) as exc:
                log.warning("Final flush failed: %r", exc)

        tune_garbage_collector()
        log.info("Starting worker %s: broker %s, web http://%s:%d", settings.app_id, settings.broker, settings.web_host, settings.web_port)
        worker = BoundedWorker(
            worker_app.app, loglevel=settings.log_level, shutdown_timeout=settings.shutdown_timeout, on_stopped=final_flush,
            logging_config=logging_config(settings.log_level, settings.log_format),
        )
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
            log.info("Worker stopped with exit code %d", code)
            return code
    return 0
