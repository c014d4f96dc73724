"""Run the benchmark suite side by side on one embedded broker and write benchmarks/results/latest.json.

Each repetition measures every scenario on the same workload, one after the other, so the ratios
compare runs that saw the same machine load. Figures are medians over the repetitions.

    .venv/bin/python benchmarks/run.py            # what `make bench` runs
    .venv/bin/python benchmarks/run.py --quick    # one short repetition, to check the suite works
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios  # noqa: E402
from harness import BENCH_DIR, index_images, make_workload  # noqa: E402
from stylestream.streams.broker import EmbeddedKafka  # noqa: E402
from stylestream.streams.settings import Settings  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the side-by-side scenarios (default 3)")
    parser.add_argument(
        "--warmup", type=int, default=1,
        help="repetitions run first and left out of the results, so none is measured on a cold broker (default 1)",
    )
    parser.add_argument("--users", type=int, default=300, help="simulated users in the throughput workload (default 300, about 33k events)")
    parser.add_argument("--naive-events", type=int, default=4000, help="backlog of the naive pipeline (default 4000)")
    parser.add_argument("--load-share", type=float, default=0.5, help="paced load for freshness, as a share of the measured peak (default 0.5)")
    parser.add_argument("--paced-seconds", type=float, default=15.0, help="duration of the paced load in seconds (default 15)")
    parser.add_argument("--flush-interval", type=float, default=Settings().flush_interval, help="worker flush interval in seconds")
    parser.add_argument("--memory-users", type=int, nargs="*", default=[100_000], help="user counts for the worker RSS run (default 100000)")
    # NOTE: 1,000,000 users is left out of the default because the in-process run passed 13 GB of RSS
    # on a 23 GB machine before it was stopped; pass it explicitly where memory allows.
    parser.add_argument("--table-users", type=int, nargs="*", default=[100_000], help="user counts for the in-process table-state run (default 100000)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["faust", "raw", "live", "naive", "memory", "table", "store"], help="scenarios to leave out")
    parser.add_argument("--quick", action="store_true", help="one repetition with small workloads")
    parser.add_argument("--profile", type=Path, default=None, help="profile the live worker with pyinstrument and write the text report here")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep broker, worker logs and stores here instead of a temporary folder")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "latest.json", help="JSON result file")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.users, args.naive_events, args.paced_seconds = 1, 0, 100, 1500, 8.0
        args.memory_users, args.table_users = [20_000], [20_000]
    return args


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    """Return the median of `key` over the runs that have it."""
    values = [run[key] for run in runs if key in run]
    return statistics.median(values) if values else None


def run_repetition(kafka: EmbeddedKafka, work: Path, workload: Any, template: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure every throughput scenario once, one after the other."""
    result: dict[str, Any] = {"loadavg_before": os.getloadavg()[0]}
    timeout = 240.0
    if "faust" not in args.skip:
        result["faust"] = scenarios.bare_faust(kafka, work / "faust", workload, timeout)
        print(f"  bare Faust agent: {result['faust']['events_per_s']:.0f} events/s", flush=True)
    if "raw" not in args.skip:
        result["raw"] = scenarios.raw_consume(kafka, work / "raw", workload, timeout)
        print(f"  raw aiokafka + orjson: {result['raw']['events_per_s']:.0f} events/s", flush=True)
    if "live" not in args.skip:
        result["live"] = scenarios.live(
            kafka, work / "live", workload, template, timeout, args.load_share, args.paced_seconds, args.flush_interval, args.profile
        )
        live = result["live"]
        print(
            f"  live pipeline: {live['events_per_s']:.0f} events/s, {live['writes_per_event']:.3f} writes/event, "
            f"{live['table_writes_per_event']:.3f} table writes/event, {live['changelog_records_per_event']:.3f} changelog records/event, "
            f"{live['events_per_batch']:.0f} events/batch; "
            f"at {live['paced_rate']:.0f} events/s p50 {live['freshness_p50_s']:.3f} s, p99 {live['freshness_p99_s']:.3f} s",
            flush=True,
        )
    if "naive" not in args.skip:
        result["naive"] = scenarios.naive(kafka, work / "naive", workload, template, args.naive_events, timeout=90.0)
        print(f"  naive per-event upserts: {result['naive']['events_per_s']:.0f} events/s", flush=True)
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def summarise(repetitions: list[dict[str, Any]], extra: dict[str, Any], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Return the medians, the ratios measured within each repetition, and the raw runs."""
    live = [rep["live"] for rep in repetitions if "live" in rep]
    summary: dict[str, Any] = {
        "live_events_per_s": median(live, "events_per_s"),
        "faust_ceiling_events_per_s": median([rep["faust"] for rep in repetitions if "faust" in rep], "events_per_s"),
        "raw_consume_events_per_s": median([rep["raw"] for rep in repetitions if "raw" in rep], "events_per_s"),
        "naive_events_per_s": median([rep["naive"] for rep in repetitions if "naive" in rep], "events_per_s"),
        "freshness_p50_s": median(live, "freshness_p50_s"),
        "freshness_p95_s": median(live, "freshness_p95_s"),
        "freshness_p99_s": median(live, "freshness_p99_s"),
        "freshness_share_within_0_5_s": median(live, "freshness_share_within_0_5_s"),
        "freshness_load_events_per_s": median(live, "paced_rate"),
        "qdrant_writes_per_event": median(live, "writes_per_event"),
        "qdrant_writes_per_event_at_paced_load": median(live, "paced_writes_per_event"),
        "max_pending_users_at_peak": median(live, "max_pending_users"),
        "max_flush_seconds_at_peak": median(live, "max_flush_seconds"),
    }
    for name, other in (("faust", "live_to_faust_ceiling"), ("raw", "live_to_raw_consume"), ("naive", "live_to_naive")):
        ratios = [rep["live"]["events_per_s"] / rep[name]["events_per_s"] for rep in repetitions if "live" in rep and name in rep]
        summary[other] = statistics.median(ratios) if ratios else None
    summary.update(extra)
    return {
        "summary": summary,
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg": [rep.get("loadavg_before") for rep in repetitions],
        },
        "embedded_store": getattr(Settings(), "embedded_store", "local"),
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "repetitions": repetitions,
        "seconds": seconds,
        **summary,
    }


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    print(f"Load average before the run: {os.getloadavg()}", flush=True)
    workload = make_workload(users=args.users)
    print(f"Workload: {len(workload.events)} events of {args.users} users, {len(workload.images)} images", flush=True)
    extra: dict[str, Any] = {}
    with ExitStack() as cleanup:
        work = args.work_dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="stylestream-bench-")))
        kafka = cleanup.enter_context(EmbeddedKafka(work_dir=work / "kafka"))
        template_settings = Settings(broker=kafka.url, data_dir=work / "template")
        index_images(template_settings, workload.images)
        template = template_settings.qdrant_path
        for number in range(args.warmup):
            print(f"Warm-up repetition {number + 1}/{args.warmup} (left out of the results)", flush=True)
            run_repetition(kafka, work / f"warmup{number}", workload, template, args)
        repetitions = []
        for number in range(args.repeats):
            print(f"Repetition {number + 1}/{args.repeats}", flush=True)
            repetitions.append(run_repetition(kafka, work / f"rep{number}", workload, template, args))
        if "memory" not in args.skip:
            for users in args.memory_users:
                measured = scenarios.memory(kafka, work / f"memory{users}", workload, template, users, timeout=600.0)
                extra[f"worker_rss_bytes_per_user_{users}"] = measured["bytes_per_user"]
                print(f"  worker RSS growth with {users} users: {measured['bytes_per_user']:.0f} bytes/user", flush=True)
    if "table" not in args.skip:
        for users in args.table_users:
            output = subprocess.run(
                [sys.executable, str(BENCH_DIR / "table_memory.py"), "--users", str(users)], check=True, capture_output=True, text=True
            ).stdout
            measured = json.loads(output)
            extra[f"table_bytes_per_user_{users}"] = measured["bytes_per_user"]
            print(f"  table state with {users} users: {measured['bytes_per_user']:.0f} bytes/user", flush=True)
    if "store" not in args.skip:
        output = subprocess.run([sys.executable, str(BENCH_DIR / "store_rate.py")], check=True, capture_output=True, text=True).stdout
        extra["store"] = json.loads(output)
        for name, rate in extra["store"]["upserts_per_s"].items():
            print(f"  store {name}: {rate:.0f} user upserts/s", flush=True)
    users_key = f"worker_rss_bytes_per_user_{max(args.memory_users)}" if args.memory_users else None
    extra["bytes_per_user"] = extra.get(users_key) if users_key else None
    result = summarise(repetitions, extra, args, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"Wrote {args.output} after {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
