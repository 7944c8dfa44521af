"""Backlogs under each policy, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from fullduplex.hub import Gap, GapReason, Message, Policy, TopicConfig
from fullduplex.transports.backlog import Backlog, Mailbox
from fullduplex.transports.common import EnvelopeCache


def msg(seq: int, data: object = None) -> Message:
    return Message("t", seq, data if data is not None else seq, 0.0)


def drain(backlog: Backlog) -> list[Message | Gap]:
    items = []
    while (item := backlog.pop()) is not None:
        items.append(item)
    return items


def test_drop_oldest_reports_a_gap_then_the_newest() -> None:
    backlog = Backlog("t", TopicConfig(queue_size=3), since=0)
    for seq in range(1, 8):
        assert backlog.push(msg(seq))
    assert drain(backlog) == [Gap("t", 0, 5, GapReason.DROPPED), msg(5), msg(6), msg(7)]
    assert backlog.sent == 7 and backlog.dropped == 4


def test_no_gap_without_loss() -> None:
    backlog = Backlog("t", TopicConfig(queue_size=3), since=4)
    backlog.push(msg(5))
    backlog.push(msg(6))
    assert drain(backlog) == [msg(5), msg(6)]


def test_conflate_when_full_keeps_latest_per_key_in_seq_order() -> None:
    config = TopicConfig(policy=Policy.CONFLATE, queue_size=2, conflate_key=lambda d: d["k"])
    backlog = Backlog("t", config, since=0)
    backlog.push(msg(1, {"k": "a"}))
    backlog.push(msg(2, {"k": "b"}))
    backlog.push(msg(3, {"k": "a"}))  # full: replaces 1, no gap
    assert drain(backlog) == [msg(2, {"k": "b"}), msg(3, {"k": "a"})]
    assert backlog.dropped == 1


def test_conflate_not_full_keeps_everything() -> None:
    config = TopicConfig(policy=Policy.CONFLATE, queue_size=10, conflate_key=lambda d: d["k"])
    backlog = Backlog("t", config, since=0)
    for seq in (1, 2, 3):
        backlog.push(msg(seq, {"k": "a"}))
    assert [m.seq for m in drain(backlog) if isinstance(m, Message)] == [1, 2, 3]


def test_disconnect_overflows() -> None:
    backlog = Backlog("t", TopicConfig(policy=Policy.DISCONNECT, queue_size=2), since=0)
    assert backlog.push(msg(1)) and backlog.push(msg(2))
    assert not backlog.push(msg(3))
    assert backlog.overflowed


def test_hub_gap_merges_with_a_drop() -> None:
    backlog = Backlog("t", TopicConfig(queue_size=2), since=0)
    backlog.push(Gap("t", 0, 10))
    backlog.push(msg(10))
    backlog.push(msg(11))  # evicts the gap: the loss starts at 0
    assert drain(backlog) == [Gap("t", 0, 10, GapReason.TRIMMED), msg(10), msg(11)]


def test_fast_path_skip_moves_the_cursor() -> None:
    backlog = Backlog("t", TopicConfig(), since=None)
    backlog.skip(msg(4))
    assert backlog.sent == 4
    backlog.skip(Gap("t", 4, 9))
    assert backlog.sent == 8


async def test_mailbox_wakes_on_put_and_times_out() -> None:
    mailbox = Mailbox()
    put = mailbox.add(Backlog("t", TopicConfig(), since=0))
    assert not await mailbox.wait(0.01)
    asyncio.get_running_loop().call_later(0.01, put, msg(1))
    assert await mailbox.wait(1)
    assert mailbox.take() == [msg(1)]
    mailbox.close()
    assert await mailbox.wait(1)


def test_envelope_cache_serializes_once_and_is_bounded() -> None:
    cache = EnvelopeCache(max_topics=2)
    m = Message("a", 1, {"x": "é"}, 1.5)
    assert cache.text(m) == '{"topic":"a","seq":1,"data":{"x":"é"},"time":1.5}'
    cache.text(m)
    assert cache.encoded == 1
    cache.text(Message("b", 1, 0, 0.0))
    cache.text(Message("c", 1, 0, 0.0))
    assert len(cache._last) == 2


def test_from_history_overflow_marks_behind_instead_of_a_gap() -> None:
    backlog = Backlog("t", TopicConfig(queue_size=3), since=0, from_history=True)
    for seq in range(1, 8):
        assert backlog.push(msg(seq))
    assert backlog.behind and backlog.dropped == 0
    mailbox = Mailbox()
    mailbox.backlogs["t"] = backlog
    assert mailbox.take() == []  # a behind backlog waits for its catch-up
    # History returns 1-2 (a chunk of 2): still behind; then 3-7: continues the backlog.
    assert backlog.catch_up(None, [msg(1), msg(2)], complete=False) == [msg(1), msg(2)]
    assert backlog.behind
    assert backlog.catch_up(None, [msg(3), msg(4)], complete=False) == [msg(3), msg(4)]
    assert not backlog.behind  # the backlog holds 5, 6, 7
    assert drain(backlog) == [msg(5), msg(6), msg(7)]


def test_catch_up_passes_history_gaps_and_drops_what_it_covers() -> None:
    backlog = Backlog("t", TopicConfig(queue_size=2), since=0, from_history=True)
    for seq in range(1, 6):
        backlog.push(msg(seq))
    items = backlog.catch_up(Gap("t", 0, 4), [msg(4), msg(5)], complete=True)
    assert items == [Gap("t", 0, 4), msg(4), msg(5)]
    assert not backlog.behind and not backlog and backlog.sent == 5


def test_from_history_needs_a_cursor() -> None:
    with pytest.raises(ValueError):
        Backlog("t", TopicConfig(), since=None, from_history=True)
