"""The framework's ceiling: a Faust app whose agents only count events, run as a child process.

It consumes the same topics, with the same partitions and consumer settings, as the worker.
GET /count on BENCH_WEB_PORT returns the number of events seen. Configured by BENCH_* variables.
"""

from __future__ import annotations

import os

import faust
from faust.web import Request, Response, View

counts = {"events": 0}
app = faust.App(
    os.environ["BENCH_APP_ID"],
    broker=os.environ["BENCH_BROKER"],
    store="memory://",
    datadir=os.path.join(os.environ["BENCH_DATA_DIR"], "faust"),
    topic_partitions=int(os.environ["BENCH_PARTITIONS"]),
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    broker_rebalance_timeout=3.0,
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    web_port=int(os.environ["BENCH_WEB_PORT"]),
    web_in_thread=False,
    consumer_max_fetch_size=4 * 1_048_576,
)


async def count_events(stream: faust.StreamT) -> None:
    """Count every event and do nothing else."""
    async for _ in stream.events():
        counts["events"] += 1


for index, name in enumerate(os.environ["BENCH_TOPICS"].split(",")):
    topic = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    app.agent(topic, name=f"bench.count{index}")(count_events)


@app.page("/count")
async def count_view(view: View, request: Request) -> Response:
    return view.json(counts)


if __name__ == "__main__":
    faust.Worker(app, loglevel="WARNING").execute_from_commandline()
