"""The naive pipeline: the worker, but every event's user is upserted to Qdrant before the next event.

Each event is validated, looked up, applied and stored in the table exactly as in the worker, then
the sink flushes that one user at once instead of coalescing changes for a flush interval.
Configured by STYLESTREAM_* variables, like `stylestream worker`.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from stylestream.streams import app as app_module
from stylestream.streams.settings import Settings
from stylestream.streams.worker import run_worker

_user_agent = app_module.StyleStreamApp._user_agent


def _flushing_user_agent(self: Any, topic: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    async def flush_after(*args: Any) -> None:
        await handler(*args)
        await self.sink.flush(force=True)

    return _user_agent(self, topic, flush_after)


app_module.StyleStreamApp._user_agent = _flushing_user_agent

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker"]
    sys.exit(run_worker(Settings()))
