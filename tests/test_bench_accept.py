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
