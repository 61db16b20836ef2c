"""jetspec_sglang/profiling.py: the JETSPEC_PROFILE step records (periods, phases, flushing), off by default.
The scheduler hook and the worker marks run inside real servers in bench/bench_round.py."""
import time

from jetspec_sglang import profiling


def test_off_unless_the_variable_names_a_file(monkeypatch):
    monkeypatch.setattr(profiling, "_PROFILER", None)
    monkeypatch.delenv(profiling.ENV, raising=False)
    assert not profiling.enabled() and profiling.active() is None
    monkeypatch.setenv(profiling.ENV, "  ")
    assert profiling.active() is None
    monkeypatch.setenv(profiling.ENV, "/tmp/x.jsonl")
    prof = profiling.active()
    assert prof is not None and prof.path == "/tmp/x.jsonl" and profiling.active() is prof


def test_steps_periods_phases_and_flush(tmp_path):
    path = tmp_path / "steps.jsonl"
    prof = profiling.StepProfiler(str(path))
    for bs in (1, 1, 4):
        prof.step_begin(bs)
        prof.worker_begin(n=8)
        time.sleep(0.002)
        prof.lap("draft_forward")
        time.sleep(0.001)
        prof.lap("verify_forward")
        prof.lap("verify_forward")  # a phase marked twice is summed
        prof.step_end()
        time.sleep(0.003)  # the scheduler's own work between steps
    assert not path.exists()  # nothing is written during a decode streak
    prof.other_batch()  # a prefill: the streak ends, records go to disk
    records = profiling.read_records(str(path))
    assert [r["bs"] for r in records] == [1, 1, 4] and all(r["n"] == 8 for r in records)
    for r in records[:2]:
        assert r["period_s"] >= r["run_s"] + 0.003 > r["run_s"] >= sum(r["phases"].values())
        assert r["phases"]["draft_forward"] >= 0.002 and r["phases"]["verify_forward"] >= 0.001
    assert records[2]["period_s"] is None  # the last step of a streak has no successor
    prof.step_begin(2)  # after the prefill: no period across it
    prof.step_end()
    prof.other_batch()
    assert profiling.read_records(str(path))[3]["period_s"] is None


def test_flush_every_keeps_the_open_step(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling, "FLUSH_EVERY", 3)
    path = tmp_path / "steps.jsonl"
    prof = profiling.StepProfiler(str(path))
    for _ in range(3):
        prof.step_begin(1)
        prof.step_end()
    written = profiling.read_records(str(path))
    assert len(written) == 2 and all(r["period_s"] is not None for r in written)
    assert len(prof.records) == 1  # its period closes at the next step
    prof.step_begin(1)
    assert prof.records[0]["period_s"] is not None
