"""Await chains of the worker's asyncio tasks, logged when a partition stalls.

`Task.get_stack` returns only the outermost frame of a suspended coroutine, so this walks the
chain of awaited coroutines and generators down to the innermost one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

MAX_DEPTH = 24


def await_chain(awaitable: Any) -> list[str]:
    """Return the frames of `awaitable` and of what it awaits, outermost first, as 'name (file:line)'."""
    frames = []
    while awaitable is not None and len(frames) < MAX_DEPTH:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            # A finished coroutine has no frame. Anything else is a future, or the asend of an
            # async generator, which does not expose its generator.
            if not any(hasattr(awaitable, name) for name in ("cr_frame", "ag_frame", "gi_frame")):
                frames.append(type(awaitable).__name__)
            break
        frames.append(f"{frame.f_code.co_qualname} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return frames


def describe_tasks(loop: asyncio.AbstractEventLoop | None = None) -> list[str]:
    """Return one line per unfinished task of `loop` (default: the running loop): its name and await chain."""
    lines = []
    for task in asyncio.all_tasks(loop):
        if task.done():
            continue
        lines.append(f"{task.get_name()}: {' -> '.join(await_chain(task.get_coro()))}")
    return sorted(lines)
