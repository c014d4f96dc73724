"""Run `stylestream worker` under pyinstrument and write the profile to BENCH_PROFILE (text) on exit.

Used by `run.py --profile`: configured by STYLESTREAM_* variables like the worker itself.
"""

from __future__ import annotations

import os
import sys

from pyinstrument import Profiler

from stylestream.streams.settings import Settings
from stylestream.streams.worker import run_worker

if __name__ == "__main__":
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        code = run_worker(Settings())
    finally:
        profiler.stop()
        with open(os.environ["BENCH_PROFILE"], "w") as handle:
            handle.write(profiler.output_text(unicode=False, color=False, show_all=False))
            handle.write("\nFunctions by own time:\n")
            handle.write(profiler.output_text(unicode=False, color=False, flat=True))
    sys.exit(code)
