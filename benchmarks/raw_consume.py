"""The transport's ceiling: one aiokafka consumer with orjson decoding, run as a child process.

It reads BENCH_TOPICS from the start until BENCH_TOTAL events are decoded and writes the time
at which each count was reached (one sample per fetched batch) to BENCH_RESULT as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import orjson
from aiokafka import AIOKafkaConsumer


async def consume() -> list[tuple[float, int]]:
    """Consume and decode until the target count; return (monotonic time, count) samples."""
    total = int(os.environ["BENCH_TOTAL"])
    consumer = AIOKafkaConsumer(
        *os.environ["BENCH_TOPICS"].split(","),
        bootstrap_servers=os.environ["BENCH_BOOTSTRAP"], group_id=os.environ["BENCH_APP_ID"],
        auto_offset_reset="earliest", enable_auto_commit=True, max_partition_fetch_bytes=4 * 1_048_576,
    )
    await consumer.start()
    samples: list[tuple[float, int]] = []
    consumed = 0
    try:
        while consumed < total:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batches.values():
                for record in records:
                    orjson.loads(record.value)
                consumed += len(records)
            if batches:
                samples.append((time.monotonic(), consumed))
    finally:
        await consumer.stop()
    return samples


if __name__ == "__main__":
    result = asyncio.run(consume())
    with open(os.environ["BENCH_RESULT"], "w") as handle:
        json.dump(result, handle)
