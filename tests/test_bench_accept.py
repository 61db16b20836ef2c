"""bench_accept's command line: heads are named (causal / bidirectional / --head NAME=DIR) and a bad one is refused
with the flag in the message. The measurement itself is covered by test_replay.py (replay == engine)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/ is not a package
import bench_accept  # noqa: E402


def test_heads_are_named_in_the_order_given():
    args = bench_accept.parse(["--causal", "a", "--head", "gpu=b", "--head", "new=c"])
    assert list(args.heads.items()) == [("causal", "a"), ("gpu", "b"), ("new", "c")]
    assert bench_accept.parse(["--head", "only=x"]).heads == {"only": "x"}


@pytest.mark.parametrize("argv", [[], ["--head", "nodir"], ["--head", "=x"], ["--causal", "a", "--head", "causal=b"]])
def test_a_bad_head_list_is_refused(argv, capsys):
    with pytest.raises(SystemExit):
        bench_accept.parse(argv)
    assert "--head" in capsys.readouterr().err  # the message names the flag and how to write it


def test_tree_algos_make_one_row_each_and_a_chain(tmp_path):
    args = bench_accept.parse(["--head", "h=x", "--budgets", "8", "16"])
    assert args.tree_algos == ("best_first", "accum_logp")  # the default builder and the paper's
    assert bench_accept.configs(args, ["h"]) == [("h", "best_first", 8, 7), ("h", "best_first", 16, 7),
                                                 ("h", "accum_logp", 8, 7), ("h", "accum_logp", 16, 7),
                                                 ("h", "chain", 16, 1)]
    rows = [{"dataset": ds, "head": "h", "mode": m, "budget": b, "tau": t}
            for ds in bench_accept.DATASETS for m, b, t in (("best_first", 8, 2.5), ("accum_logp", 8, 1.9),
                                                            ("chain", 16, 2.0))]
    lines = bench_accept.report(rows, tmp_path).splitlines()
    assert "| gsm8k | h | best_first | 2.50 | 2.00 |" in lines and "| gsm8k | h | accum_logp | 1.90 | 2.00 |" in lines
    with pytest.raises(SystemExit):
        bench_accept.parse(["--head", "h=x", "--tree-algos", "crossproduct"])
