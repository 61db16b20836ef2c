"""draft_topk: the draft rows' top-K log-probs through the target's LM head, and the projection-dtype choice."""
import pytest
import torch

from jetspec_sglang.draft_topk import DraftProjection, topk_logprobs

V, M, T, K = 3000, 64, 7, 5


@pytest.fixture
def weights():
    g = torch.Generator().manual_seed(0)
    return torch.randn(V, M, generator=g) * 0.3, torch.randn(T, M, generator=g)


def test_topk_logprobs_equal_log_softmax_topk_in_fp32(weights):
    weight_VM, hidden_TM = weights
    logprobs_TK, ids_TK = topk_logprobs(hidden_TM, weight_VM, K)
    want_TK, want_ids_TK = torch.log_softmax(hidden_TM @ weight_VM.T, dim=-1).topk(K, dim=-1)
    assert ids_TK.dtype == torch.int64 and logprobs_TK.dtype == torch.float32
    assert torch.equal(ids_TK, want_ids_TK)
    torch.testing.assert_close(logprobs_TK, want_TK, atol=1e-5, rtol=1e-5)
    assert (logprobs_TK[:, :-1] >= logprobs_TK[:, 1:]).all(), "sorted descending"


def test_bf16_projection_is_close_to_fp32(weights):
    weight_VM, hidden_TM = weights
    logprobs_TK, ids_TK = DraftProjection.build(weight_VM, "bfloat16", rows=T)(hidden_TM, K)
    want_TK, want_ids_TK = topk_logprobs(hidden_TM, weight_VM, K)
    assert torch.equal(ids_TK[:, 0], want_ids_TK[:, 0]), "clear winners keep their rank in bf16"
    assert (logprobs_TK - want_TK).abs().max() < 0.15
    assert torch.logsumexp(logprobs_TK, -1).max() <= 1e-3, "log-probs of a normalised distribution"


def test_build_modes(weights):
    weight_VM, _ = weights
    kept = DraftProjection.build(weight_VM, "model", rows=T)
    assert kept.weight_VM is weight_VM and "model" in kept.reason
    forced = DraftProjection.build(weight_VM, "bfloat16", rows=T)
    assert forced.weight_VM.dtype == torch.bfloat16 and torch.equal(forced.weight_VM, weight_VM.bfloat16())
    auto = DraftProjection.build(weight_VM, "auto", rows=T)
    assert auto.weight_VM.dtype in (torch.float32, torch.bfloat16) and " ms " in auto.reason, auto.reason
    half_VM = weight_VM.bfloat16()
    for mode in ("auto", "bfloat16"):
        assert DraftProjection.build(half_VM, mode, rows=T).weight_VM is half_VM, "a bf16 head is used as it is"


def test_bad_mode_names_the_variable(weights):
    with pytest.raises(ValueError, match="JETSPEC_DRAFT_TOPK_DTYPE"):
        DraftProjection.build(weights[0], "fp8", rows=T)


def test_projection_reuses_its_work_tensors_across_row_counts(weights):
    weight_VM, hidden_TM = weights
    projection = DraftProjection.build(weight_VM, "model", rows=T)
    for rows in (3, T, 2, T):  # grows to T, then smaller calls use the leading rows of the same tensors
        logprobs_TK, ids_TK = projection(hidden_TM[:rows], K)
        want_TK, want_ids_TK = topk_logprobs(hidden_TM[:rows], weight_VM, K)
        assert torch.equal(ids_TK, want_ids_TK)
        torch.testing.assert_close(logprobs_TK, want_TK, atol=1e-5, rtol=1e-5)
    first = projection(hidden_TM[:2], K)[0].clone()
    projection(hidden_TM[2:4], K)
    assert torch.equal(projection(hidden_TM[:2], K)[0], first), "results do not alias the work tensors"
