"""The WebSocket fan-out (one hub subscription and one loop per topic), over recording transports.

Real :class:`~fullduplex.WebSocket` objects on transports that keep what is written and report
the write buffer size the test sets, and a memory hub, which delivers synchronously: which
connection gets which message, when, is then exact.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest

from fullduplex.asyncio.connection import WebSocket
from fullduplex.hub import Gap, Hub, Policy, TopicConfig
from fullduplex.protocol import Connection, Side, State
from fullduplex.protocol.http11 import Headers, Request, Response
from fullduplex.transports import broadcast
from fullduplex.transports.broadcast import Fanout, FrameCache, WebSocketSink

LIMIT = 1024


class RecordingTransport(asyncio.Transport):
    """Keeps every write; its write buffer holds ``buffered`` bytes, as the test says."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.data = bytearray()
        self.buffered = 0
        self.fail = fail
        self.closing = False

    def write(self, data: Any) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.data += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (LIMIT // 4, LIMIT)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def messages(self) -> list[Any]:
        """The JSON of every text frame written (server frames: unmasked)."""
        out = []
        data, i = bytes(self.data), 0
        while i < len(data):
            opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
            i += 2
            if length == 126:
                length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
            elif length == 127:
                length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
            if opcode == 0x1:
                out.append(json.loads(data[i : i + length]))
            i += length
        return out


class Client:
    """A server-side connection of the /pubsub protocol, without sockets."""

    def __init__(self, fanout: Fanout, *, fail: bool = False) -> None:
        self.transport = RecordingTransport(fail=fail)
        request = Request("GET", "/pubsub", Headers())
        self.ws = WebSocket(
            Connection(Side.SERVER),
            self.transport,
            request=request,
            response=Response(101, Headers()),
            subprotocol=None,
            ping_interval=None,
        )
        self.fanout = fanout
        # As the /pubsub session does: a connection closed as a slow consumer leaves at once.
        self.sink = WebSocketSink(self.ws, fanout.frames, on_slow=self.leave_all)

    def leave_all(self, sink: WebSocketSink) -> None:
        for backlog in sink.topics.values():
            self.fanout.unsubscribe(backlog)

    def subscribe(self, topic: str, since: int | None = None) -> None:
        backlog = self.sink.add(topic, self.fanout.hub.config(topic), since)
        self.fanout.subscribe(self.sink, backlog, since)

    def unsubscribe(self, topic: str) -> None:
        self.fanout.unsubscribe(self.sink.topics[topic])
        self.sink.remove(topic)

    def seqs(self) -> list[int | tuple[int, int]]:
        """Sequence numbers received; a gap as (since, first_available)."""
        return [
            (m["gap"]["since"], m["gap"]["first_available"]) if "gap" in m else m["seq"]
            for m in self.transport.messages()
        ]

    def stall(self) -> None:
        """The peer stops reading: the buffer goes over the limit and the transport pauses."""
        self.transport.buffered = LIMIT + 1
        self.ws.pause_writing()

    def drain(self) -> None:
        """The peer reads again: the buffer empties and the transport resumes writing."""
        self.transport.buffered = 0
        self.ws.resume_writing()


@pytest.fixture
async def hub() -> Any:
    async with Hub() as hub:
        yield hub


def fanout_of(hub: Hub) -> Fanout:
    return Fanout(hub, FrameCache())


async def publish(hub: Hub, topic: str, count: int) -> None:
    for i in range(count):
        await hub.publish(topic, {"i": i})


def hub_subscriptions(hub: Hub, topic: str) -> int:
    feed = hub._feeds.get(topic)
    return 0 if feed is None else len(feed.subscriptions)


async def test_one_hub_subscription_and_one_frame_per_message(hub: Hub) -> None:
    fanout = fanout_of(hub)
    clients = [Client(fanout) for _ in range(50)]
    for client in clients:
        client.subscribe("t")
    assert hub_subscriptions(hub, "t") == 1
    assert fanout.subscribers("t") == 50
    await publish(hub, "t", 5)
    for client in clients:
        assert client.seqs() == [1, 2, 3, 4, 5]
        assert client.sink.topics["t"].sent == 5
        assert client.ws.messages_sent == 5
    assert fanout.frames.framed == 5
    assert fanout.frames.envelopes.encoded == 5


async def test_unsubscribe_and_last_leave_release_the_hub_subscription(hub: Hub) -> None:
    fanout = fanout_of(hub)
    a, b = Client(fanout), Client(fanout)
    a.subscribe("t")
    b.subscribe("t")
    await publish(hub, "t", 1)
    a.unsubscribe("t")
    await publish(hub, "t", 1)
    assert a.seqs() == [1]
    assert b.seqs() == [1, 2]
    b.unsubscribe("t")
    assert hub_subscriptions(hub, "t") == 0
    assert fanout.subscribers("t") == 0
    b.subscribe("t")  # a new loop, from now
    await publish(hub, "t", 1)
    assert b.seqs() == [1, 2, 3]


async def test_a_topic_left_by_its_last_subscriber_is_freed_without_the_cycle_collector(
    hub: Hub,
) -> None:
    fanout = fanout_of(hub)
    live, late = Client(fanout), Client(fanout)
    live.subscribe("t")
    await publish(hub, "t", 3)
    late.subscribe("t", since=0)  # a replay subscription of its own, joining later
    await asyncio.sleep(0.05)
    await publish(hub, "t", 1)
    gc.collect()
    gc.disable()  # from here only reference counts free anything
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage
    try:
        late.unsubscribe("t")
        live.unsubscribe("t")
        assert hub_subscriptions(hub, "t") == 0
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage}
        assert not left & {"_TopicFanout", "Subscription", "Backlog"}, left
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert late.seqs() == [1, 2, 3, 4] and live.seqs() == [1, 2, 3, 4]


async def test_since_replays_then_joins_the_loop_without_loss_or_duplicates(hub: Hub) -> None:
    fanout = fanout_of(hub)
    live = Client(fanout)
    live.subscribe("t")
    await publish(hub, "t", 5)
    late = Client(fanout)
    late.subscribe("t", since=2)  # replays 3-5 from a subscription of its own
    assert hub_subscriptions(hub, "t") == 2
    await publish(hub, "t", 1)  # 6 arrives while the replay has not run yet
    await asyncio.sleep(0.05)
    assert late.seqs() == [3, 4, 5, 6]
    await publish(hub, "t", 3)  # the first live message after the replay: it joins the loop
    assert hub_subscriptions(hub, "t") == 1
    assert late.seqs() == [3, 4, 5, 6, 7, 8, 9]
    assert live.seqs() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert fanout.subscribers("t") == 2


async def test_since_at_the_loops_cursor_joins_at_once(hub: Hub) -> None:
    fanout = fanout_of(hub)
    first = Client(fanout)
    first.subscribe("t")
    await publish(hub, "t", 3)
    again = Client(fanout)
    again.subscribe("t", since=3)  # a reconnection with an up-to-date cursor
    assert hub_subscriptions(hub, "t") == 1
    await publish(hub, "t", 1)
    assert again.seqs() == [4]


async def test_since_trimmed_gets_a_gap_then_joins(hub: Hub) -> None:
    hub.configure("short", TopicConfig(history_size=3))
    fanout = fanout_of(hub)
    live = Client(fanout)
    live.subscribe("short")
    await publish(hub, "short", 10)
    late = Client(fanout)
    late.subscribe("short", since=1)
    await asyncio.sleep(0.05)
    await publish(hub, "short", 1)
    assert late.seqs() == [(1, 8), 8, 9, 10, 11]
    assert late.sink.topics["short"].sent == 11
    assert hub_subscriptions(hub, "short") == 1


async def test_a_stalled_member_gets_a_backlog_the_others_do_not_wait(hub: Hub) -> None:
    hub.configure("t", TopicConfig(queue_size=3, policy=Policy.DROP_OLDEST))
    fanout = fanout_of(hub)
    fast, slow = Client(fanout), Client(fanout)
    fast.subscribe("t")
    slow.subscribe("t")
    await publish(hub, "t", 1)
    slow.stall()
    await publish(hub, "t", 6)  # 2-7: 2-4 dropped, 5-7 wait
    assert fast.seqs() == [1, 2, 3, 4, 5, 6, 7]
    assert slow.seqs() == [1]
    assert slow.sink.dropped == 3
    slow.drain()
    await asyncio.sleep(0)  # the backlog task runs once, woken by resume_writing
    await asyncio.sleep(0)
    assert slow.seqs() == [1, (1, 5), 5, 6, 7]
    assert slow.sink._flusher is None  # done: no task once the backlog is empty
    await publish(hub, "t", 1)
    assert slow.seqs()[-1] == 8


async def test_backlog_is_written_on_resume_not_on_a_timer(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broadcast, "BACKLOG_RETRY", 3600.0)  # a poll would never come
    fanout = fanout_of(hub)
    client = Client(fanout)
    client.subscribe("t")
    client.stall()
    await publish(hub, "t", 3)
    flusher = client.sink._flusher
    assert flusher is not None and not flusher.done()
    await asyncio.sleep(0.05)
    assert client.seqs() == []  # still paused: nothing written, nothing polled
    loop = asyncio.get_running_loop()
    resumed = loop.time()
    client.drain()
    await asyncio.wait_for(flusher, 1.0)
    assert loop.time() - resumed < 0.5
    assert client.seqs() == [1, 2, 3]


async def test_idle_and_keeping_up_connections_have_no_task(hub: Hub) -> None:
    fanout = fanout_of(hub)
    before = len(asyncio.all_tasks())
    clients = [Client(fanout) for _ in range(20)]
    for client in clients:
        client.subscribe("t")
    await publish(hub, "t", 3)
    assert len(asyncio.all_tasks()) == before
    clients[0].stall()
    await publish(hub, "t", 1)
    assert len(asyncio.all_tasks()) == before + 1  # only while a backlog exists
    clients[0].drain()
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == before


async def test_disconnect_policy_closes_1013_and_leaves_the_loop(hub: Hub) -> None:
    hub.configure("t", TopicConfig(queue_size=2, policy=Policy.DISCONNECT))
    fanout = fanout_of(hub)
    fast, slow = Client(fanout), Client(fanout)
    fast.subscribe("t")
    slow.subscribe("t")
    slow.stall()
    await publish(hub, "t", 3)
    assert slow.sink.slow
    assert slow.ws.core.close_sent == (1013, "slow consumer")
    assert fanout.subscribers("t") == 1
    await publish(hub, "t", 2)
    assert fast.seqs() == [1, 2, 3, 4, 5]


async def test_a_failing_connection_is_closed_1011_and_the_others_served(hub: Hub) -> None:
    fanout = fanout_of(hub)
    good, bad, other = Client(fanout), Client(fanout, fail=True), Client(fanout)
    for client in (good, bad, other):
        client.subscribe("t")
    await publish(hub, "t", 2)
    assert good.seqs() == [1, 2]
    assert other.seqs() == [1, 2]
    assert bad.ws.core.state is not State.OPEN
    assert bad.ws.core.close_sent is not None and bad.ws.core.close_sent[0] == 1011
    assert fanout.subscribers("t") == 2


async def test_hub_gap_reaches_every_member_with_its_cursor(hub: Hub) -> None:
    fanout = fanout_of(hub)
    a, b = Client(fanout), Client(fanout)
    a.subscribe("t")
    await publish(hub, "t", 2)
    b.subscribe("t")
    # What a broker does after an outage: the messages 3-4 are gone.
    hub._deliver(Gap("t", 2, 5))
    await publish(hub, "t", 3)  # 3, 4, 5: the feed passes on only 5
    assert a.seqs() == [1, 2, (2, 5), 5]
    assert b.seqs() == [(2, 5), 5]
    assert a.sink.topics["t"].sent == b.sink.topics["t"].sent == 5


async def test_a_replay_is_paced_by_the_socket_not_judged_slow(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    # A reconnection replays what it missed: a burst of the server's making (the hub calls
    # back a chunk of up to 500 at once), not the client's slowness. Under ``disconnect`` it
    # was closed as "slow" whenever the replay outran its buffers: every dropped consumer
    # was dropped again on every reconnection (issue 15).
    hub.configure("t", TopicConfig(queue_size=2, policy=Policy.DISCONNECT))
    fanout = fanout_of(hub)
    await publish(hub, "t", 7)
    live = Client(fanout)
    live.subscribe("t")  # the loop stands at 7
    late = Client(fanout)
    late.stall()
    late.subscribe("t", since=0)  # 1-7 into a stalled socket and a backlog of 2
    await asyncio.sleep(0.05)
    assert late.ws.core.close_sent is None
    assert late.seqs() == []
    assert hub_subscriptions(hub, "t") == 1  # the replay is paused: its subscription closed
    await publish(hub, "t", 2)  # 8, 9 meanwhile
    late.drain()  # the backlog (1, 2) goes out, then the replay resumes from 2
    await asyncio.sleep(0.05)
    assert late.seqs() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    await publish(hub, "t", 1)  # the first live message after the replay: it joins the loop
    assert hub_subscriptions(hub, "t") == 1
    assert late.seqs()[-1] == 10 and live.seqs() == [8, 9, 10]
    # Once live, slowness is judged: stalled and overflowing, it is closed and leaves.
    late.stall()
    await publish(hub, "t", 3)
    assert late.ws.core.close_sent == (1013, "slow consumer")
    assert fanout.subscribers("t") == 1
    assert hub_subscriptions(hub, "t") == 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    await publish(hub, "t", 1)
    assert live.seqs()[-1] == 14


async def test_a_paused_replay_that_leaves_is_forgotten(hub: Hub) -> None:
    hub.configure("t", TopicConfig(queue_size=2))
    fanout = fanout_of(hub)
    await publish(hub, "t", 5)
    live = Client(fanout)
    live.subscribe("t")
    late = Client(fanout)
    late.stall()
    late.subscribe("t", since=0)
    await asyncio.sleep(0.05)
    late.unsubscribe("t")
    late.drain()
    await asyncio.sleep(0.05)
    assert late.seqs() == []  # its backlog went with the topic; no replay resumed
    assert fanout.subscribers("t") == 1 and hub_subscriptions(hub, "t") == 1
