"""bench/bench_round.py: the per-instance medians and server labels (the servers themselves run in the bench)."""
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_round  # noqa: E402


def test_median_summary_is_field_by_field():
    runs = [{"period_ms": 70.0, "tau": 2.0, "phases_ms": {"topk": 2.0, "verify_forward": 50.0}},
            {"period_ms": 66.0, "tau": 2.0, "phases_ms": {"topk": 1.0}},
            {"period_ms": 81.0, "tau": 2.0, "phases_ms": {"topk": 3.0, "verify_forward": 60.0}}]
    got = bench_round.median_summary(runs)
    assert got["period_ms"] == 70.0 and got["tau"] == 2.0 and got["instances"] == 3
    assert got["phases_ms"] == {"topk": 2.0, "verify_forward": 50.0}, "a phase missing in one instance counts as 0"
    assert bench_round.median_summary([]) is None


def test_labels_name_the_vocabulary_only_when_compared():
    one, two = SimpleNamespace(draft_vocabs=["auto"]), SimpleNamespace(draft_vocabs=["full", "auto"])
    assert bench_round._label("bfloat16", 8, "auto", one) == "bfloat16-N8"
    assert bench_round._label("bfloat16", 8, "full", two) == "bfloat16-N8-vfull"
