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
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from crash_harness import run_crash_trial  # noqa: E402
from trials import run_trials, write_summary  # noqa: E402
from stylestream.models.simulation import SimulationConfig, simulate  # noqa: E402
from stylestream.streams.broker import EmbeddedKafka  # noqa: E402


def main() -> None:
    """Run the trials and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills", type=int, default=2)
    arguments = parser.parse_args()

    def trial(kafka: EmbeddedKafka, folder: Path, number: int) -> dict[str, Any]:
        marketplace = simulate(SimulationConfig(seed=100 + number))
        return run_crash_trial(kafka, folder, marketplace, kills=arguments.kills, seed=number)

    results = run_trials("crash", arguments.trials, trial)
    write_summary("crash", {
        "crash_trials": len(results),
        "crash_events_per_trial": min(result["events"] for result in results),
        "crash_kills_per_trial": arguments.kills,
        "crash_max_abs_diff": max(result["max_abs_diff"] for result in results),
        "crash_lost_users": sum(len(result["lost_users"]) for result in results),
        "crash_miscounted_users": sum(len(result["miscounted_users"]) for result in results),
        "crash_liveness_restarts": sum(result["liveness_restarts"] for result in results),
    }, results)


if __name__ == "__main__":
    main()
