"""describe_tasks: each waiting task with the chain of coroutines it awaits."""

from __future__ import annotations

import asyncio

from stylestream.streams.diagnostics import await_chain, describe_tasks


async def wait_inner(event: asyncio.Event) -> None:
    await event.wait()


async def wait_outer(event: asyncio.Event) -> None:
    await wait_inner(event)


def test_describe_tasks_shows_nested_awaits() -> None:
    async def run() -> list[str]:
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_outer(event), name="waiter")
        await asyncio.sleep(0)
        lines = describe_tasks()
        event.set()
        await waiter
        return lines

    lines = asyncio.run(run())

    waiter_lines = [line for line in lines if line.startswith("waiter: ")]
    assert len(waiter_lines) == 1
    assert "wait_outer (test_diagnostics.py:" in waiter_lines[0]
    assert "-> wait_inner (test_diagnostics.py:" in waiter_lines[0]
    assert "-> Event.wait (locks.py:" in waiter_lines[0]


def test_await_chain_of_finished_coroutine_is_empty() -> None:
    coroutine = wait_inner(asyncio.Event())
    coroutine.close()

    assert await_chain(coroutine) == []
