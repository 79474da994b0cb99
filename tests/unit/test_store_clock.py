"""The clock beats are judged on stands still while the store does not answer this node."""

from __future__ import annotations

import pytest

from elasticml.launch.kv import ClockedKV, MemoryKV, StoreUnreachable
from elasticml.launch.liveness import Liveness, StoreClock


class Manual:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def real():
    return Manual()


def test_it_runs_with_the_real_clock_while_the_store_answers(real):
    clock = StoreClock(grace=0.25, clock=real)
    start = clock()
    request = clock.begin()
    real.now += 0.1
    clock.end(request, answered=True)
    real.now += 5
    assert clock() - start == pytest.approx(5.1)


def test_a_request_waiting_past_grace_stops_it_until_the_answer(real):
    clock = StoreClock(grace=0.25, clock=real)
    start = clock()
    request = clock.begin()
    real.now += 7  # a member holds the request through an election
    assert clock() - start == pytest.approx(0.25)
    clock.end(request, answered=True)
    real.now += 1
    assert clock() - start == pytest.approx(1.25)


def test_a_failure_stops_it_until_some_request_is_answered(real):
    clock = StoreClock(grace=0.25, clock=real)
    start = clock()
    real.now += 1
    clock.end(clock.begin(), answered=False)
    real.now += 10
    clock.end(clock.begin(), answered=False)
    assert clock() - start == pytest.approx(1)
    clock.end(clock.begin(), answered=True)
    real.now += 2
    assert clock() - start == pytest.approx(3)


def test_an_answer_does_not_restart_it_while_another_request_is_overdue(real):
    clock = StoreClock(grace=0.25, clock=real)
    start = clock()
    stuck = clock.begin()
    real.now += 2
    clock.end(clock.begin(), answered=True)
    real.now += 1
    assert clock() - start == pytest.approx(0.25)
    clock.end(stuck, answered=False)
    clock.end(clock.begin(), answered=True)
    real.now += 1
    assert clock() - start == pytest.approx(1.25)


def test_it_never_goes_back(real):
    clock = StoreClock(grace=0.25, clock=real)
    seen = [clock()]
    pending = clock.begin()
    for step in range(20):
        real.now += 0.1
        if step == 10:
            clock.end(pending, answered=False)
        if step == 15:
            clock.end(clock.begin(), answered=True)
        seen.append(clock())
    assert seen == sorted(seen)


def test_a_store_outage_takes_no_node_for_lost(real):
    clock = StoreClock(grace=0.25, clock=real)
    liveness = Liveness(node_timeout=3.0, clock=clock)
    kv = ClockedKV(MemoryKV(), clock)
    liveness.observe("peer", b"1")
    liveness.observe("peer", b"2")
    down = ClockedKV(_Down(), clock)
    for _ in range(20):  # 10 s without answers
        real.now += 0.5
        with pytest.raises(StoreUnreachable):
            down.get("beat/peer")
    kv.set("beat/peer", b"2")  # answered again, the peer's beat not moved yet
    liveness.observe("peer", kv.get("beat/peer"))
    assert liveness.alive("peer")
    real.now += 3.5  # and now it has really been silent
    liveness.observe("peer", kv.get("beat/peer"))
    assert not liveness.alive("peer")


class _Down(MemoryKV):
    def get(self, key):
        raise StoreUnreachable("down")
