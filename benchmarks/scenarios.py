"""One measurement per scenario: each consumes a pre-produced backlog on fresh topics.

- `bare_faust`: Faust agents that only count events (the framework's ceiling);
- `raw_consume`: one aiokafka consumer with orjson decoding (the transport's ceiling);
- `live`: the worker, then paced load at a given share of its peak for freshness;
- `naive`: the worker with one upsert per event instead of the coalescing sink.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from harness import (
    Workload,
    copy_store,
    histogram_delta,
    histogram_quantile,
    measure_rate,
    produce_backlog,
    produce_paced,
    rate_between,
    rss_bytes,
    run_child,
    scenario_settings,
    stop_child,
    worker_env,
)
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.client import WorkerClient, WorkerRequestError
from stylestream.streams.supervisor import WorkerProcess, all_applied

USER_TOPICS = ("searches", "downloads")


def bare_faust(kafka: EmbeddedKafka, work: Path, workload: Workload, timeout: float) -> dict[str, Any]:
    """Measure Faust agents that only count events on the worker's topics."""
    settings = scenario_settings(kafka, work, "faust")
    total = sum(produce_backlog(settings, workload.events).values())
    port = free_port()
    env = {
        "BENCH_APP_ID": settings.app_id, "BENCH_BROKER": settings.broker, "BENCH_DATA_DIR": str(work),
        "BENCH_PARTITIONS": str(settings.partitions), "BENCH_WEB_PORT": str(port),
        "BENCH_TOPICS": f"{settings.searches_topic},{settings.downloads_topic}",
    }
    process = run_child("bare_faust.py", env, work / "bare_faust.log")
    client = WorkerClient(f"http://127.0.0.1:{port}", timeout=2.0)

    def count() -> int | None:
        try:
            return client.request("GET", "/count")["events"]
        except WorkerRequestError:
            return None

    try:
        rate = measure_rate(count, total, timeout, is_alive=lambda: process.poll() is None)
    finally:
        stop_child(process)
    return {"events_per_s": rate.events_per_s, "events": total}


def raw_consume(kafka: EmbeddedKafka, work: Path, workload: Workload, timeout: float) -> dict[str, Any]:
    """Measure one aiokafka consumer that decodes each value with orjson."""
    settings = scenario_settings(kafka, work, "raw")
    total = sum(produce_backlog(settings, workload.events).values())
    result_path = work / "raw_consume.json"
    env = {
        "BENCH_APP_ID": settings.app_id, "BENCH_BOOTSTRAP": settings.bootstrap_servers, "BENCH_TOTAL": str(total),
        "BENCH_TOPICS": f"{settings.searches_topic},{settings.downloads_topic}", "BENCH_RESULT": str(result_path),
    }
    process = run_child("raw_consume.py", env, work / "raw_consume.log")
    try:
        process.wait(timeout=timeout)
    finally:
        stop_child(process)
    if process.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"raw_consume.py exited with code {process.returncode}; see {work / 'raw_consume.log'}")
    samples = [tuple(sample) for sample in json.loads(result_path.read_text())]
    rate = rate_between(samples, 0.1 * total, 0.9 * total)
    return {"events_per_s": rate.events_per_s, "events": total}


def _user_events(stats: dict[str, Any], counter: str, settings: Any) -> int:
    """Sum a /stats counter over the user topics; `applied` counts by kind, the others by topic name."""
    values = stats.get(counter, {})
    names = USER_TOPICS if counter == "applied" else (settings.searches_topic, settings.downloads_topic)
    return sum(values.get(name, 0) for name in names)


class ProfiledWorker(WorkerProcess):
    """A worker child that runs under pyinstrument and writes its profile to `profile_path` when stopped."""

    def __init__(self, env: dict[str, str], log_path: Path, web_port: int, profile_path: Path) -> None:
        super().__init__({**env, "BENCH_PROFILE": str(profile_path)}, log_path, web_port)

    def start(self) -> "ProfiledWorker":
        self.process = run_child("profile_worker.py", self.env, self.log_path)
        return self


def _start_worker(
    settings: Any, work: Path, store_template: Path, extra: dict[str, str], profile: Path | None = None
) -> WorkerProcess:
    copy_store(store_template, settings)
    port = free_port()
    env = worker_env(settings, port, **extra)
    if profile is None:
        worker = WorkerProcess(env, work / "worker.log", port)
    else:
        worker = ProfiledWorker(env, work / "worker.log", port, profile)
    worker.start()
    return worker


def live(
    kafka: EmbeddedKafka, work: Path, workload: Workload, store_template: Path, timeout: float,
    load_share: float, paced_seconds: float, flush_interval: float, profile: Path | None = None,
) -> dict[str, Any]:
    """Measure the worker's peak rate on a backlog, then freshness under paced load at `load_share` of that peak."""
    settings = scenario_settings(kafka, work / "data", "live")
    produced = produce_backlog(settings, workload.events)
    total = sum(produced.values())
    worker = _start_worker(settings, work, store_template, {"STYLESTREAM_FLUSH_INTERVAL": str(flush_interval)}, profile)
    pending: list[int] = []
    flush_seconds: list[float] = []
    try:
        worker.wait_ready()

        def count() -> int | None:
            try:
                stats = worker.client.stats()
            except WorkerRequestError:
                return None
            pending.append(stats["pending_users"])
            flush_seconds.append(stats["last_flush_seconds"])
            return _user_events(stats, "processed", settings)

        rate = measure_rate(count, total, timeout, is_alive=lambda: worker.process is not None and worker.process.poll() is None)
        peak = worker.wait_until(all_applied(produced), timeout=timeout, what="the backlog to be applied and flushed")
        applied = _user_events(peak, "applied", settings)
        peak_rss = rss_bytes(worker.process.pid)

        # Freshness: new users' events at a share of the measured peak, timestamped as they are sent.
        paced_rate = load_share * rate.events_per_s
        fresh = workload.renamed("fresh-")[: int(paced_rate * paced_seconds)]
        sent = produce_paced(settings, fresh, paced_rate)
        expected = {topic: produced[topic] + sent["counts"][topic] for topic in produced}
        after = worker.wait_until(all_applied(expected), timeout=timeout, what="the paced events to be applied and flushed")
    finally:
        worker.stop()
    bounds, cumulative, observed = histogram_delta(peak["event_to_upsert_seconds"], after["event_to_upsert_seconds"])
    paced_applied = _user_events(after, "applied", settings) - applied
    window = pending[len(pending) // 10: max(len(pending) * 9 // 10, 1)]
    return {
        "events_per_s": rate.events_per_s,
        "events": total,
        "applied": applied,
        "users_upserted": peak["users_upserted"],
        "writes_per_event": peak["users_upserted"] / max(applied, 1),
        "table_writes_per_event": peak["state_writes"] / max(applied, 1),
        "changelog_records_per_event": peak["records_sent"].get(f"{settings.app_id}-user-state-changelog", 0) / max(applied, 1),
        "events_per_batch": applied / max(peak["user_batches"], 1),
        "max_pending_users": max(window, default=0),
        "last_pending_users_in_window": window[-1] if window else 0,
        "max_flush_seconds": max(flush_seconds, default=0.0),
        "flushes": peak["flushes"],
        "worker_rss_bytes": peak_rss,
        "paced_rate": sent["rate"],
        "paced_events": sum(sent["counts"].values()),
        "paced_writes_per_event": (after["users_upserted"] - peak["users_upserted"]) / max(paced_applied, 1),
        "freshness_observations": observed,
        "freshness_p50_s": histogram_quantile(bounds, cumulative, observed, 0.50),
        "freshness_p95_s": histogram_quantile(bounds, cumulative, observed, 0.95),
        "freshness_p99_s": histogram_quantile(bounds, cumulative, observed, 0.99),
        "freshness_share_within_0_5_s": cumulative[bounds.index(0.5)] / max(observed, 1),
    }


def naive(kafka: EmbeddedKafka, work: Path, workload: Workload, store_template: Path, events: int, timeout: float) -> dict[str, Any]:
    """Measure the worker with one read-compare-write upsert per event."""
    settings = scenario_settings(kafka, work / "data", "naive")
    total = sum(produce_backlog(settings, workload.events[:events]).values())
    copy_store(store_template, settings)
    port = free_port()
    process = run_child("naive_worker.py", worker_env(settings, port), work / "naive_worker.log")
    client = WorkerClient(f"http://127.0.0.1:{port}", timeout=2.0)

    def count() -> int | None:
        try:
            return _user_events(client.stats(), "processed", settings)
        except WorkerRequestError:
            return None

    try:
        rate = measure_rate(count, total, timeout, is_alive=lambda: process.poll() is None)
    finally:
        stop_child(process)
    return {"events_per_s": rate.events_per_s, "events": total, "drained": rate.reached >= total}


def memory(kafka: EmbeddedKafka, work: Path, workload: Workload, store_template: Path, users: int, timeout: float) -> dict[str, Any]:
    """Measure the worker's RSS growth per user after `users` new users each make one search and one download."""
    settings = scenario_settings(kafka, work / "data", "memory")
    events = light_history(workload, users)
    worker = _start_worker(settings, work, store_template, {"STYLESTREAM_MAX_PENDING_USERS": str(users * 2)})
    try:
        worker.wait_ready()
        # Warm up imports, caches and buffers with other users first, so the delta is the table's.
        warm = light_history(workload, 2000, prefix="warm-")
        warm_counts = produce_backlog(settings, warm)
        worker.wait_until(all_applied(warm_counts), timeout=timeout, what="the warm-up events")
        before = rss_bytes(worker.process.pid)
        produced = produce_backlog(settings, events)
        expected = {topic: warm_counts[topic] + produced[topic] for topic in produced}
        started = time.monotonic()
        worker.wait_until(all_applied(expected), timeout=timeout, what=f"{users} users to be applied")
        seconds = time.monotonic() - started
        after = rss_bytes(worker.process.pid)
    finally:
        worker.stop()
    return {"users": users, "rss_growth_bytes": after - before, "bytes_per_user": (after - before) / users, "seconds": seconds}


def light_history(workload: Workload, users: int, prefix: str = "mem-") -> list[tuple[str, dict[str, Any]]]:
    """Return one search and one download from it for each of `users` new users, built from the workload's events."""
    return list(iter_light_history(workload, users, prefix))


def iter_light_history(workload: Workload, users: int, prefix: str = "mem-") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the events of `light_history` one at a time, so that millions of users fit in memory."""
    searches = [event for kind, event in workload.events if kind == "searches"]
    for index in range(users):
        search = searches[index % len(searches)]
        user_id = f"{prefix}{index:07d}"
        yield "searches", {**search, "user_id": user_id}
        yield "downloads", {
            "event_id": search["event_id"] + "-d", "user_id": user_id, "image_id": search["results"][0],
            "timestamp": search["timestamp"] + 60.0, "search_id": search["search_id"],
        }

if __name__ == "__main__":
    sys.exit("run benchmarks/run.py; this module only defines the scenarios")
