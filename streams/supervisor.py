"""Running a worker as a child process: start it, wait until it is ready or idle, and stop it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from stylestream.schemas.errors import StylestreamError
from stylestream.streams.client import WorkerClient, WorkerRequestError

log = logging.getLogger(__name__)


class WorkerProcessError(StylestreamError):
    """A child worker exited early or did not become ready in time."""


class WorkerProcess:
    """A `stylestream worker` child process configured through STYLESTREAM_* variables."""

    def __init__(self, env: dict[str, str], log_path: Path, web_port: int) -> None:
        self.env = env
        self.log_path = log_path
        self.client = WorkerClient(f"http://127.0.0.1:{web_port}")
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        """Start the child; its output goes to `log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stylestream.streams", "worker"],
                env={**os.environ, **self.env}, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        log.info("Started worker process %d (log: %s)", self.process.pid, self.log_path)
        return self

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-4000:]
            raise WorkerProcessError(f"worker exited with code {self.process.returncode}:\n{tail}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the worker's /ready endpoint is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.client.ready():
                return
            time.sleep(0.3)
        raise WorkerProcessError(f"worker not ready within {timeout:.0f} s; see {self.log_path}")

    def wait_until(self, condition: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Poll /stats until `condition(stats)` holds; return the last stats."""
        deadline = time.monotonic() + timeout
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                stats = self.client.stats()
            except WorkerRequestError:
                time.sleep(0.3)
                continue
            if condition(stats):
                return stats
            time.sleep(0.3)
        raise WorkerProcessError(f"timed out after {timeout:.0f} s waiting for {what}; last stats: {stats}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop with SIGTERM, then SIGKILL after `timeout`; return the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("Worker %d did not stop within %.0f s; killing it", process.pid, timeout)
                process.kill()
                process.wait()
        log.info("Worker process %d exited with code %s", process.pid, process.returncode)
        return process.returncode

    def kill(self) -> None:
        """Kill the worker with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def all_applied(produced: dict[str, int]) -> Callable[[dict[str, Any]], bool]:
    """Return a /stats condition: every produced message processed and no user waiting for a flush."""

    def condition(stats: dict[str, Any]) -> bool:
        processed = stats.get("processed", {})
        done = all(processed.get(topic, 0) >= count for topic, count in produced.items())
        return done and stats.get("pending_users", 1) == 0

    return condition
