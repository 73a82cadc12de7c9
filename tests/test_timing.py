"""dithead.timing: per-phase wall time of streaming jobs."""

from __future__ import annotations

import pytest

from dithead import timing
from dithead.timing import PhaseTimer


@pytest.fixture
def clock(monkeypatch):
    """A fake perf_counter that moves only when the test says so."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    return now


def test_nested_phases_count_exclusively_and_add_up(clock):
    timer = PhaseTimer()
    with timer.phase("encode"):
        clock[0] += 1.0
        with timer.phase("model"):
            clock[0] += 5.0
            with timer.phase("masked encode"):
                clock[0] += 2.0
            clock[0] += 0.5
        clock[0] += 0.25
    assert timer.seconds == {"encode": 1.25, "model": 5.5, "masked encode": 2.0}
    assert sum(timer.seconds.values()) == clock[0]


def test_iterate_charges_producing_each_item_not_consuming_it(clock):
    def slow_items():
        for item in range(3):
            clock[0] += 2.0          # producing an item
            yield item

    timer = PhaseTimer()
    seen = []
    for item in timer.iterate("decode", slow_items()):
        clock[0] += 1.0              # the consumer's own work, outside any phase
        seen.append(item)
    assert seen == [0, 1, 2] and timer.seconds == {"decode": 6.0}


def test_report_gives_frames_per_second_of_the_phases_around_the_model(clock):
    timer = PhaseTimer()
    for name, seconds in (("model", 10.0), ("latent decode", 2.0), ("decode", 1.0), ("encode", 3.0)):
        with timer.phase(name):
            clock[0] += seconds
    report = timer.report(frames=100)
    assert report["phase_seconds"] == {"model": 10.0, "latent decode": 2.0, "decode": 1.0, "encode": 3.0}
    assert report["non_model_frames_per_second"] == 25.0          # 100 frames / (1 + 3) s
