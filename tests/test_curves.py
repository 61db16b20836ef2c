"""Held-out curves of several runs side by side (train/curves.py, `python -m jetspec_sglang.train curves`)."""
from __future__ import annotations

import json

import pytest

from jetspec_sglang.train.__main__ import main
from jetspec_sglang.train.curves import compare_runs, heldout_points, runs_table


def _write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _held(step, positions, a1, kl, with_count=True):
    line = {"step": step, "heldout": {"agree": [a1, a1 / 2], "kl_mean": kl, "tau": {}, "tau_chain": 1 + a1}}
    return {**line, "supervised_positions": positions} if with_count else line


def test_heldout_points_carry_the_last_count_to_a_line_without_one(tmp_path):
    m = _write(tmp_path / "m.jsonl", [_held(0, 1000, 0.2, 4.0), {"step": 10, "loss": 3.0, "supervised_positions": 5000},
                                      _held(10, None, 0.3, 3.5, with_count=False)])
    pts = heldout_points(m)
    assert [p["supervised_positions"] for p in pts] == [1000, 5000]
    assert [p["agree"][0] for p in pts] == [0.2, 0.3]


def test_compare_runs_rows_table_and_plot(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_held(0, 1000, 0.2, 4.0), _held(5, 2000, 0.4, 3.0), _held(9, 3000, 0.35, 2.9)])
    b = _write(tmp_path / "b.jsonl", [_held(0, 1000, 0.2, 4.0), _held(9, 3000, 0.45, 2.8)])
    rows = compare_runs({"a": a, "b": b}, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    ra, rb = rows
    assert (ra["agree1_first"], ra["agree1_last"], ra["agree1_best"], ra["points"]) == (0.2, 0.35, 0.4, 3)
    assert (rb["kl_first"], rb["kl_last"], rb["positions_last"]) == (4.0, 2.8, 3000)
    table = runs_table(rows)
    assert "| a | 3 |" in table and "0.200 -> 0.350 (0.400)" in table and "| b | 2 |" in table


def test_a_run_without_heldout_lines_is_named(tmp_path, capsys):
    empty = _write(tmp_path / "e.jsonl", [{"step": 1, "loss": 2.0}])
    with pytest.raises(ValueError, match="--run e=.*no held-out lines"):
        compare_runs({"e": empty})
    good = _write(tmp_path / "metrics.jsonl", [_held(0, 10, 0.5, 1.0)])
    assert main(["curves", "--run", f"g={tmp_path}", "--out", str(tmp_path / "t.md")]) == 0  # a folder works
    assert "| g | 1 |" in (tmp_path / "t.md").read_text() and "| g | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no held-out lines"):
        main(["curves", "--run", f"e={empty}"])
    with pytest.raises(SystemExit, match="write NAME=PATH"):
        main(["curves", "--run", str(good)])
