"""The naive pipeline: the worker, but every event's user is upserted to Qdrant before the next event.

Each event is validated, looked up, applied and stored in the table exactly as in the worker, but
in batches of one event, and the sink flushes that one user at once instead of coalescing changes
for a flush interval. Configured by STYLESTREAM_* variables, like `stylestream worker`.
"""

from __future__ import annotations

import sys
from typing import Any

from stylestream.streams import app as app_module
from stylestream.streams.settings import Settings
from stylestream.streams.worker import run_worker

_apply_user_batch = app_module.StyleStreamApp._apply_user_batch


async def _apply_and_flush(self: Any, *args: Any) -> None:
    await _apply_user_batch(self, *args)
    await self.sink.flush(force=True)


app_module.StyleStreamApp._apply_user_batch = _apply_and_flush

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker"]
    sys.exit(run_worker(Settings(user_batch_size=1)))
