"""The loop shared by the crash and rebalance trials: run, time and print each trial, then write the summary."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from stylestream.streams.broker import EmbeddedKafka

ROOT = Path(__file__).resolve().parents[1]


def run_trials(name: str, count: int, run_trial: Callable[[EmbeddedKafka, Path, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `run_trial(kafka, folder, trial)` `count` times on one embedded broker, in fresh folders under data/.

    Each result gets its duration in `seconds` and is printed as one JSON line.
    """
    results = []
    folder = ROOT / "data" / f"{name}-trials"
    with EmbeddedKafka(heap="1g") as kafka:
        for trial in range(count):
            shutil.rmtree(folder / str(trial), ignore_errors=True)
            started = time.monotonic()
            result = run_trial(kafka, folder / str(trial), trial)
            result["seconds"] = round(time.monotonic() - started, 1)
            results.append(result)
            print(json.dumps({"trial": trial, **result}), flush=True)
    return results


def write_summary(name: str, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Write the summary and every trial to benchmarks/results/<name>.json, and print the summary."""
    output = ROOT / "benchmarks" / "results" / f"{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({**summary, "trials": results}, indent=2))
    print(json.dumps(summary, indent=2))
