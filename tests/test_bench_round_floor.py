"""bench/bench_round_floor.py: the kernel-floor forward runs every component at every row count, and its table
splits a verify's excess into kernels and the rest with the right arithmetic."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sglang", reason="sglang is not installed (run scripts/setup.sh)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_round_floor as floor  # noqa: E402


def tiny_weights(layers=2, M=64, H=4, G=2, E=16, I=96, V=300, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)

    def w(o, i):
        return floor._maybe_pack((torch.randn(o, i, generator=gen) * 0.05).to(dtype))

    return floor.TargetWeights(qkv=[w((H + 2 * G) * E, M) for _ in range(layers)],
                               o=[w(M, H * E) for _ in range(layers)],
                               gate_up=[w(2 * I, M) for _ in range(layers)],
                               down=[w(M, I) for _ in range(layers)],
                               lm_head=w(V, M), norm=floor.RMSNorm(M, eps=1e-5).to(dtype), heads=H, kv_heads=G,
                               head_dim=E)


def test_every_component_is_timed_at_every_row_count():
    ms = floor.measure(tiny_weights(), rows=[1, 4], prefix=12, reps=2)
    assert sorted(ms) == [1, 4]
    for T in ms:
        assert set(ms[T]) == set(floor.COMPONENTS)
        assert all(v > 0 for v in ms[T].values()), ms[T]


def test_rmsnorm_matches_the_formula():
    """The forward's RMSNorm is SGLang's own, on the fp32-inside path with the residual add."""
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    r = torch.randn(3, 8, dtype=torch.bfloat16)
    norm = floor.RMSNorm(8, eps=1e-5).to(torch.bfloat16)
    norm.weight.data.fill_(2.0)
    with torch.inference_mode():
        out, res = norm.forward_native(x, r)
    s = x.float() + r.float()
    want = (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5) * 2.0).to(torch.bfloat16)
    assert torch.equal(res, s.to(torch.bfloat16)) and torch.equal(out, want)


def test_floor_table_splits_the_verify_excess():
    ms = {1: dict.fromkeys(floor.COMPONENTS, 1.0), 16: dict.fromkeys(floor.COMPONENTS, 2.0)}
    rounds = {"table": [{"bs": 1, "N": 16, "vocab": "auto", "plain_packed_ms": 40.0,
                         "jetspec": {"phases_ms": {"verify_forward": 52.0}}},
                        {"bs": 4, "N": 16, "vocab": "auto", "plain_packed_ms": 90.0,
                         "jetspec": {"phases_ms": {"verify_forward": 99.0}}}]}
    base, sixteen = floor.floor_table(ms, rounds)
    n = len(floor.COMPONENTS)
    assert base["excess"] == 0 and "verify_forward_ms" not in base
    assert sixteen["total"] == 2.0 * n and sixteen["excess"] == 1.0 * n
    assert sixteen["verify_excess_ms"] == 12.0, "the b = 1 row is read, not b = 4"
    assert sixteen["rest_ms"] == pytest.approx(12.0 - n)
    assert sixteen["rest_plain_steps"] == pytest.approx((12.0 - n) / 40.0)
    md = floor.markdown([base, sixteen])
    assert md.count("\n") == 4 and "plain steps" in md


def test_rows_must_include_the_plain_step():
    with pytest.raises(SystemExit):
        floor.parse(["--rows", "8", "16"])
