"""The on-disk spool: order, durability across restarts, torn tails, bounds, segments."""

from __future__ import annotations

import pytest

from streams.spool import Spool, SpoolFull


def rec(i: int) -> tuple[str, bytes, bytes]:
    return ("topic", f"k{i}".encode(), f'{{"i":{i}}}'.encode())


def test_records_come_back_in_order_and_commit_moves_the_cursor(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**6, segment_bytes=10**6)
    sp.append([rec(i) for i in range(10)])
    got = sp.read(4)
    assert [r.value for r in got] == [rec(i)[2] for i in range(4)]
    assert got[0].key == b"k0" and got[0].topic == "topic"
    sp.commit(got)
    assert sp.depth == 6
    assert [r.value for r in sp.read(100)] == [rec(i)[2] for i in range(4, 10)]


def test_unsent_records_survive_a_restart(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**6, segment_bytes=10**6)
    sp.append([rec(i) for i in range(5)])
    sp.commit(sp.read(2))
    sp.close()
    again = Spool(tmp_path, max_bytes=10**6, segment_bytes=10**6)
    assert again.depth == 3
    assert [r.value for r in again.read(10)] == [rec(i)[2] for i in range(2, 5)]


def test_a_torn_last_line_is_dropped_on_open(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**6, segment_bytes=10**6)
    sp.append([rec(0), rec(1)])
    sp.close()
    seg = next(tmp_path.glob("seg-*.log"))
    with open(seg, "ab") as f:
        f.write(b'["topic","k2"]\t{"i":')  # a crash in the middle of an append
    again = Spool(tmp_path, max_bytes=10**6, segment_bytes=10**6)
    assert [r.value for r in again.read(10)] == [rec(0)[2], rec(1)[2]]
    again.append([rec(3)])
    assert [r.value for r in again.read(10)][-1] == rec(3)[2]


def test_the_bound_refuses_new_records_instead_of_dropping(tmp_path):
    sp = Spool(tmp_path, max_bytes=200, segment_bytes=10**6)
    sp.append([rec(0), rec(1)])
    with pytest.raises(SpoolFull, match="spool is full"):
        sp.append([rec(i) for i in range(10)])
    assert sp.depth == 2  # nothing half-written
    sp.commit(sp.read(2))
    sp.append([rec(5)])  # room again once sent
    assert sp.depth == 1


def test_segments_roll_over_and_sent_ones_are_deleted(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**6, segment_bytes=100)
    for i in range(30):
        sp.append([rec(i)])
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    out = []
    while batch := sp.read(7):
        out.extend(batch)
        sp.commit(batch)
    assert [r.value for r in out] == [rec(i)[2] for i in range(30)]
    assert sp.depth == 0 and sp.depth_bytes == 0
    assert len(list(tmp_path.glob("seg-*.log"))) == 1  # only the one still being written
