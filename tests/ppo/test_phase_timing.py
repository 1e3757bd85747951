import json

import pytest

from cellrlhf.ppo.phase_timing import PhaseTimer, format_timing_table, timing_summary


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_nested_phases_are_exclusive_and_the_rest_is_other():
    clock = FakeClock()
    timer = PhaseTimer(clock)
    timer.begin_step()
    clock.advance(1.0)  # outside any phase
    with timer.phase("update"):
        clock.advance(2.0)
        with timer.phase("logprobs"):
            clock.advance(3.0)
            with timer.phase("generation"):
                clock.advance(4.0)
            with timer.phase("reward"):
                clock.advance(0.5)
        clock.advance(0.25)
    record = timer.end_step(7)
    assert record == {
        "step": 7.0,
        "update": 2.25,
        "logprobs": 3.0,
        "generation": 4.0,
        "reward": 0.5,
        "other": 1.0,
        "total": 10.75,
    }


def test_remainder_can_be_named_and_phases_accumulate_within_a_step():
    clock = FakeClock()
    timer = PhaseTimer(clock)
    timer.begin_step()
    for _ in range(3):
        with timer.phase("generation"):
            clock.advance(1.0)
    clock.advance(5.0)
    record = timer.end_step(1, remainder="update")
    assert record["generation"] == 3.0
    assert record["update"] == 5.0
    assert record["total"] == 8.0
    assert "other" not in record


def test_a_phase_opens_the_step_when_no_begin_was_called():
    clock = FakeClock()
    timer = PhaseTimer(clock)
    clock.advance(100.0)  # time before the step is not counted
    with timer.phase("reward"):
        clock.advance(2.0)
    assert timer.end_step(1)["total"] == 2.0


def test_log_dict_averages_unlogged_steps_then_empties():
    clock = FakeClock()
    timer = PhaseTimer(clock)
    for seconds in (1.0, 3.0):
        timer.begin_step()
        with timer.phase("reward"):
            clock.advance(seconds)
        clock.advance(seconds)
        timer.end_step(1)
    logs = timer.pop_log_dict()
    assert logs["timing/step_s"] == pytest.approx(4.0)
    assert logs["timing/reward_s"] == pytest.approx(2.0)
    assert logs["timing/reward_fraction"] == pytest.approx(0.5)
    assert timer.pop_log_dict() == {}
    assert len(timer.history) == 2


def test_summary_fractions_add_to_one_and_table_lists_phases(tmp_path):
    records = [
        {"step": 1.0, "generation": 1.0, "update": 2.0, "other": 1.0, "total": 4.0},
        {"step": 2.0, "generation": 3.0, "update": 2.0, "other": 1.0, "total": 6.0},
    ]
    summary = timing_summary(records)
    assert summary["step_s"] == 5.0
    assert summary["generation_s"] == 2.0
    assert sum(v for k, v in summary.items() if k.endswith("_fraction")) == pytest.approx(1.0)
    table = format_timing_table({"ppo": summary})
    assert table.splitlines()[0] == "| run | step (s) | generation | update | other |"
    assert "| ppo | 5.000 | 2.000 s (40.0 %) | 2.000 s (40.0 %) | 1.000 s (20.0 %) |" in table

    timer = PhaseTimer()
    timer.history = records
    saved = json.loads(timer.save(tmp_path / "t.json").read_text())
    assert saved["steps"] == records
    assert saved["mean"] == summary
