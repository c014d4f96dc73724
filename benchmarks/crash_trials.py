"""Crash trials: SIGKILL a worker at random moments while a marketplace streams in, then compare with a clean run.

Usage: python benchmarks/crash_trials.py [--trials 20] [--kills 2]

Each trial streams the default simulated marketplace (about 22,000 user events) through a fresh
worker on the embedded broker. It kills the worker with SIGKILL `--kills` times at random moments
and restarts it. Then it waits until the consumer group's lag is zero, restarting the worker when
its /health liveness check reports a stalled partition, as an orchestrator would. Finally it
compares every user's vector in Qdrant with the independent numpy computation of the same events. Results go to benchmarks/results/crash.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from crash_harness import run_crash_trial  # noqa: E402
from stylestream.models.simulation import SimulationConfig, simulate  # noqa: E402
from stylestream.streams.broker import EmbeddedKafka  # noqa: E402


def main() -> None:
    """Run the trials and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills", type=int, default=2)
    arguments = parser.parse_args()
    results = []
    folder = ROOT / "data" / "crash-trials"
    with EmbeddedKafka(heap="1g") as kafka:
        for trial in range(arguments.trials):
            shutil.rmtree(folder / str(trial), ignore_errors=True)
            marketplace = simulate(SimulationConfig(seed=100 + trial))
            started = time.monotonic()
            result = run_crash_trial(kafka, folder / str(trial), marketplace, kills=arguments.kills, seed=trial)
            result["seconds"] = round(time.monotonic() - started, 1)
            results.append(result)
            print(json.dumps({"trial": trial, **result}), flush=True)
    summary = {
        "crash_trials": len(results),
        "crash_events_per_trial": min(result["events"] for result in results),
        "crash_kills_per_trial": arguments.kills,
        "crash_max_abs_diff": max(result["max_abs_diff"] for result in results),
        "crash_lost_users": sum(len(result["lost_users"]) for result in results),
        "crash_miscounted_users": sum(len(result["miscounted_users"]) for result in results),
        "crash_liveness_restarts": sum(result["liveness_restarts"] for result in results),
        "trials": results,
    }
    output = ROOT / "benchmarks" / "results" / "crash.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2))
    print(json.dumps({key: value for key, value in summary.items() if key != "trials"}, indent=2))


if __name__ == "__main__":
    main()
