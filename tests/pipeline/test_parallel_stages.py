"""Stages with ``needs`` run side by side (up to ``max_parallel``), as real subprocesses.

Each stage here runs a small Python script (``stage_argv`` is replaced) that records when it
started and ended, the ``OMP_NUM_THREADS`` it was given, and sleeps, burns CPU or fails.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import textwrap
import time

import psutil
import pytest

from cellrlhf.pipeline import runner
from cellrlhf.pipeline.runner import StageFailed, run_pipeline
from cellrlhf.pipeline.spec import load_pipeline
from cellrlhf.pipeline.stage_marker import read_markers

STAGE_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from pathlib import Path

    name, out_dir, *actions = sys.argv[1:]
    start = time.time()
    for action in actions:
        verb, _, arg = action.partition("=")
        if verb == "sleep":
            time.sleep(float(arg))
        elif verb == "burn":  # busy-loop until this process used `arg` CPU seconds
            t0 = time.process_time()
            while time.process_time() - t0 < float(arg):
                pass
        elif verb == "burn_in_child":  # like accelerate launch: the work is in a grandchild
            code = "import time\\nt0 = time.process_time()\\n"
            code += "while time.process_time() - t0 < " + arg + ": pass"
            subprocess.run([sys.executable, "-c", code], check=True)
        elif verb == "print":
            print(arg, flush=True)
        elif verb == "pids":  # a grandchild that sleeps; both pids for the interrupt test
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            Path(out_dir, name + ".pids").write_text(json.dumps([os.getpid(), child.pid]))
        elif verb == "exit":
            sys.exit(int(arg))
    record = {"start": start, "end": time.time(), "omp": os.environ.get("OMP_NUM_THREADS")}
    Path(out_dir, name + ".json").write_text(json.dumps(record))
    """
)


@pytest.fixture()
def script_stages(tmp_path, monkeypatch):
    """Make every stage's command ``[name, action, ...]`` run STAGE_SCRIPT with those actions."""
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    records = tmp_path / "records"
    records.mkdir()

    def fake_argv(stage, *, resume_from=None):
        return [sys.executable, str(script), stage.name, str(records), *stage.command]

    monkeypatch.setattr(runner, "stage_argv", fake_argv)
    return records


def _spec(tmp_path, stages, **top):
    return load_pipeline({"run_dir": str(tmp_path / "run"), "stages": stages, **top})


def _stage(name, *actions, needs=None):
    entry = {"name": name, "command": list(actions) or ["sleep=0"]}
    if needs is not None:
        entry["needs"] = needs
    return entry


def _interval(records, name):
    record = json.loads((records / f"{name}.json").read_text())
    return record["start"], record["end"]


def _overlap(a, b):
    return min(a[1], b[1]) - max(a[0], b[0])


DIAMOND = [
    _stage("root"),
    _stage("left", "sleep=0.8", needs=["root"]),
    _stage("right", "sleep=0.8", needs=["root"]),
    _stage("join", needs=["left", "right"]),
]


def test_independent_stages_overlap_and_a_stage_waits_for_its_needs(tmp_path, script_stages):
    spec = _spec(tmp_path, DIAMOND, max_parallel=2)
    assert spec.max_parallel == 2
    timings = run_pipeline(spec)
    assert set(timings) == {"root", "left", "right", "join"}
    left, right = _interval(script_stages, "left"), _interval(script_stages, "right")
    assert _overlap(left, right) > 0.4, "left and right must run at the same time"
    join_start, _ = _interval(script_stages, "join")
    assert join_start >= max(left[1], right[1]), "join starts only after both of its needs"
    assert min(left[0], right[0]) >= _interval(script_stages, "root")[1]
    markers = read_markers(tmp_path / "run")
    assert markers["left"]["started_at"] < markers["right"]["ended_at"]
    assert markers["right"]["started_at"] < markers["left"]["ended_at"]
    for name, marker in markers.items():
        assert marker["ended_at"] - marker["started_at"] == pytest.approx(
            marker["seconds"], abs=0.05
        ), name


def test_max_parallel_one_runs_the_same_graph_in_file_order(tmp_path, script_stages):
    spec = _spec(tmp_path, DIAMOND, max_parallel=2)
    run_pipeline(spec, max_parallel=1)  # the argument (cellrlhf pipeline --jobs 1) wins
    left, right = _interval(script_stages, "left"), _interval(script_stages, "right")
    assert left[1] <= right[0], "with one slot, left (first in the file) runs before right"


def test_stages_without_needs_wait_for_every_earlier_stage(tmp_path, script_stages):
    spec = _spec(tmp_path, [_stage("a", "sleep=0.3"), _stage("b", "sleep=0.3")], max_parallel=2)
    run_pipeline(spec)
    assert _interval(script_stages, "a")[1] <= _interval(script_stages, "b")[0]


def test_a_failure_lets_the_other_lane_finish_then_names_the_failed_stage(
    tmp_path, script_stages, caplog
):
    stages = [
        _stage("root"),
        _stage("good", "sleep=0.8", needs=["root"]),  # started first: the terminal follows it
        _stage("bad", "print=BAD-REASON", "sleep=0.1", "exit=3", needs=["root"]),
        _stage("after", needs=["bad", "good"]),
        _stage("free", needs=["root"]),
    ]
    spec = _spec(tmp_path, stages, max_parallel=2)
    with caplog.at_level(logging.INFO, logger="cellrlhf"), pytest.raises(StageFailed) as err:
        run_pipeline(spec)
    message = str(err.value)
    assert "stage 'bad' failed (exit 3)" in message and "bad.log" in message
    assert "'good'" not in message.split("Not started")[0]
    assert "Not started: ['after', 'free']" in message, "nothing new starts after a failure"
    markers = read_markers(tmp_path / "run")
    assert set(markers) == {"root", "good"}, "the running lane finished and kept its marker"
    assert not (script_stages / "after.json").exists()
    assert "waiting for ['good'] to finish" in caplog.text
    assert "last lines of" in caplog.text and "BAD-REASON" in caplog.text, "its error is shown"


def test_every_failed_stage_is_named(tmp_path, script_stages):
    stages = [
        _stage("root"),
        _stage("one", "sleep=0.3", "exit=4", needs=["root"]),
        _stage("two", "sleep=0.3", "exit=5", needs=["root"]),
    ]
    with pytest.raises(StageFailed, match=r"'one' failed \(exit 4\).*'two' failed \(exit 5\)"):
        run_pipeline(_spec(tmp_path, stages, max_parallel=2))


def test_only_takes_needs_outside_the_selection_as_met(tmp_path, script_stages):
    stages = [
        _stage("a", "exit=1"),  # would fail: must not run
        _stage("b", "sleep=0.5", needs=["a"]),
        _stage("c", "sleep=0.5", needs=["a"]),
        _stage("d", needs=["b"]),
    ]
    spec = _spec(tmp_path, stages, max_parallel=2)
    timings = run_pipeline(spec, only=["b", "c", "d"])
    assert set(timings) == {"b", "c", "d"}
    b, c, d = (_interval(script_stages, n) for n in "bcd")
    assert _overlap(b, c) > 0.2 and d[0] >= b[1]


def test_skipped_stages_count_as_finished(tmp_path, script_stages):
    spec = _spec(tmp_path, DIAMOND, max_parallel=2)
    run_pipeline(spec, only=["root"])
    ran, skipped = [], []
    run_pipeline(spec, on_stage_end=lambda s, t, sk: (skipped if sk else ran).append(s.name))
    assert skipped == ["root"] and sorted(ran) == ["join", "left", "right"]
    assert _overlap(_interval(script_stages, "left"), _interval(script_stages, "right")) > 0.4


def test_cpu_seconds_are_exact_per_overlapping_stage(tmp_path, script_stages):
    stages = [
        _stage("burner", "burn=0.6"),
        _stage("sleeper", "sleep=0.6", needs=[]),
        _stage("launcher", "burn_in_child=0.4", needs=[]),
    ]
    run_pipeline(_spec(tmp_path, stages, max_parallel=3))
    markers = read_markers(tmp_path / "run")
    assert _overlap(_interval(script_stages, "burner"), _interval(script_stages, "sleeper")) > 0
    # Python start-up costs a few hundredths of a second; the loops cost what they were told
    assert 0.6 <= markers["burner"]["cpu_seconds"] < 0.6 + 0.4
    assert markers["sleeper"]["cpu_seconds"] < 0.3
    assert 0.4 <= markers["launcher"]["cpu_seconds"] < 0.4 + 0.6, "grandchild CPU counts"


def test_threads_are_shared_only_where_stages_can_overlap(tmp_path, script_stages, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cpus", lambda: 4)
    run_pipeline(_spec(tmp_path, DIAMOND, max_parallel=2))
    omp = {
        name: json.loads((script_stages / f"{name}.json").read_text())["omp"]
        for name in ("root", "left", "right", "join")
    }
    assert omp == {"root": "4", "left": "2", "right": "2", "join": "4"}


def test_a_stage_whose_partners_are_done_gets_every_core(tmp_path, script_stages, monkeypatch):
    """``after`` could overlap ``quick`` by the graph, but ``quick`` is done when it starts."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cpus", lambda: 4)
    stages = [
        _stage("root"),
        _stage("quick", "sleep=0", needs=["root"]),
        _stage("slow", "sleep=1.0", needs=["root"]),
        _stage("after", needs=["slow"]),
    ]
    run_pipeline(_spec(tmp_path, stages, max_parallel=2))
    omp = {
        name: json.loads((script_stages / f"{name}.json").read_text())["omp"]
        for name in ("root", "quick", "slow", "after")
    }
    assert omp == {"root": "4", "quick": "2", "slow": "2", "after": "4"}


def test_the_users_omp_num_threads_is_respected(tmp_path, script_stages, monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(runner, "available_cpus", lambda: 4)
    with caplog.at_level(logging.INFO, logger="cellrlhf"):
        run_pipeline(_spec(tmp_path, DIAMOND, max_parallel=2))
    assert "OMP_NUM_THREADS=3 is set: every stage uses it" in caplog.text
    assert "of the 4 cores (unset it" in caplog.text
    for name in ("root", "left", "right", "join"):
        assert json.loads((script_stages / f"{name}.json").read_text())["omp"] == "3"


def test_one_stage_at_a_time_reaches_the_terminal(
    tmp_path, script_stages, capfd, caplog, monkeypatch
):
    stages = [
        _stage("first", "print=FIRST-OUT", "sleep=1.0"),
        _stage("second", "print=SECOND-EARLY", "sleep=1.6", "print=SECOND-LATE", needs=[]),
    ]
    with caplog.at_level(logging.INFO, logger="cellrlhf"):
        run_pipeline(_spec(tmp_path, stages, max_parallel=2))
    terminal = capfd.readouterr().err
    assert "FIRST-OUT" in terminal and "SECOND-LATE" in terminal
    assert "SECOND-EARLY" not in terminal, "a stage that is not attached stays in its log"
    log = (tmp_path / "run" / "logs" / "second.log").read_text()
    assert "SECOND-EARLY" in log and "SECOND-LATE" in log
    assert "second: running (alongside ['first']; output in" in caplog.text
    assert re.search(r"\[second\] output follows \(started \d+ s ago; full log: ", caplog.text)


def test_ctrl_c_terminates_running_stages_and_their_children(tmp_path, script_stages):
    stages = [_stage("quick", "sleep=0.5"), _stage("long", "pids", "sleep=60", needs=[])]

    def interrupt(stage, seconds, skipped):
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_spec(tmp_path, stages, max_parallel=2), on_stage_end=interrupt)
    assert time.monotonic() - start < 8
    pids = json.loads((script_stages / "long.pids").read_text())
    for pid in pids:
        if psutil.pid_exists(pid):  # an orphan may linger as a zombie until init reaps it
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "long" not in read_markers(tmp_path / "run")


@pytest.mark.parametrize(
    ("extra", "expected"), [([], None), (["--jobs", "3"], 3), (["-j", "1"], 1)]
)
def test_jobs_flag_reaches_the_runner(tmp_path, monkeypatch, extra, expected):
    from cellrlhf.pipeline import demo, run

    seen = {}
    monkeypatch.setattr(runner, "run_pipeline", lambda spec, **kw: seen.update(kw) or {})
    config = tmp_path / "p.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nstages: [{{name: v, command: [--version]}}]\n")
    assert run.cli(["--config", str(config), "--no-report", *extra]) == 0
    assert seen["max_parallel"] == expected
    assert demo.make_parser().parse_args(extra).jobs == expected
    with pytest.raises(SystemExit):
        run.make_parser().parse_args(["--config", "x", "--jobs", "0"])
