"""The memory backend: its clock, re-entrant publishing, and what it keeps."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from fullduplex.hub import Gap, Hub, MemoryBackend, Message, TopicConfig

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_age_trimming_follows_the_clock() -> None:
    clock = Clock()
    async with Hub(MemoryBackend(clock=clock), default=TopicConfig(history_age=10)) as hub:
        for n in range(3):
            await hub.publish("t", n)
            clock.now += 4
        # Published at 0, 4 and 8 s; now 12 s: the first is older than 10 s.
        assert await hub.history("t") == (Gap("t", 0, 2), (await hub.history("t", 1))[1])
        assert [m.time for m in (await hub.history("t", 1))[1]] == [1_000_004.0, 1_000_008.0]
        clock.now += 100
        assert await hub.history("t", 1) == (Gap("t", 1, 4), [])
        assert await hub.last_seq("t") == 3


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a memory publish), synchronously."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine suspended")


async def test_publish_from_a_callback_is_delivered_after_the_current_message() -> None:
    async with Hub() as hub:
        order: list[tuple[str, int]] = []

        def echo(item: Message | Gap) -> None:
            assert isinstance(item, Message)
            order.append(("echo", item.seq))
            if item.data == "ping":
                # Re-entrant: publishing from within the fan-out of message 1.
                assert run_now(hub.publish("t", "pong")).seq == 2

        def other(item: Message | Gap) -> None:
            assert isinstance(item, Message)
            order.append(("other", item.seq))

        hub.subscribe("t", on_message=echo)
        hub.subscribe("t", on_message=other)
        await hub.publish("t", "ping")
        # Every subscriber sees 1 before 2.
        assert order == [("echo", 1), ("other", 1), ("echo", 2), ("other", 2)]


async def test_data_is_kept_as_given() -> None:
    async with Hub("memory") as hub:
        data = {"a": [1, 2]}
        message = await hub.publish("t", data)
        assert message.data is data
        assert (await hub.history("t"))[1] == [message]
