"""Rebalance trials: two workers share a stream, one is killed and restarted, then both stores are compared.

Usage: python benchmarks/rebalance_trials.py [--trials 10]

Each trial streams a small simulated marketplace (16 users, about 1,600 to 1,900 events over 12 s) into two
workers on the embedded broker, kills one with SIGKILL 3 s in, waits until the other owns every
partition, and restarts it (2 -> 1 -> 2). A worker whose /health liveness check fails is
restarted, as an orchestrator would. The newest stored state of every user must equal the
independent numpy computation of its events. Results go to benchmarks/results/rebalance.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from crash_harness import trial_settings  # noqa: E402
from rebalance_harness import run_rebalance_trial  # noqa: E402
from trials import run_trials, write_summary  # noqa: E402
from stylestream.models.simulation import SimulationConfig, simulate  # noqa: E402
from stylestream.streams.broker import EmbeddedKafka  # noqa: E402


def main() -> None:
    """Run the trials and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    arguments = parser.parse_args()

    def trial(kafka: EmbeddedKafka, folder: Path, number: int) -> dict[str, Any]:
        marketplace = simulate(SimulationConfig(images=120, users=16, styles=5, subjects=8, seed=200 + number))
        return run_rebalance_trial(trial_settings(kafka, folder), folder, marketplace)

    results = run_trials("rebalance", arguments.trials, trial)
    write_summary("rebalance", {
        "rebalance_trials": len(results),
        "rebalance_events_per_trial": min(result["events"] for result in results),
        "rebalance_max_abs_diff": max(result["max_abs_diff"] for result in results),
        "rebalance_lost_users": sum(len(result["lost_users"]) for result in results),
        "rebalance_short_users": sum(len(result["short_users"]) for result in results),
        "rebalance_duplicated_users": sum(len(result["duplicated_users"]) for result in results),
        "rebalance_undrained_trials": sum(not result["drained"] for result in results),
        "rebalance_liveness_restarts": sum(result["liveness_restarts"] for result in results),
    }, results)


if __name__ == "__main__":
    main()
