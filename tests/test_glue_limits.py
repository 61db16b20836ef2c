"""GPU-path bounds checked on CPU (the GPU path itself never ran here): glue/limits.py (the verify graph's logits
buffer, sampled verification's temporaries), args.cap_graph_batch on real SGLang ServerArgs, the worker's
power-of-two top-k width for SGLang's tiled lilicorr_topk_lse and its filter of DFLASH's N-sized start-up lines.
"""
import importlib.util
import logging

import pytest

if importlib.util.find_spec("sglang") is None:
    pytest.skip("sglang is not installed (run scripts/setup.sh)", allow_module_level=True)

import sglang_fixtures as fx  # noqa: E402

fx.import_interpreted()  # keep SGLang's Triton kernels interpretable for the other test files of this run

import torch  # noqa: E402
from jetspec_sglang.glue import limits, worker  # noqa: E402
from jetspec_sglang.glue.args import cap_graph_batch  # noqa: E402
from jetspec_sglang.models import prepare_model  # noqa: E402
from sglang.srt.arg_groups.overrides import record_foreign_defaults, resolution_result  # noqa: E402
from sglang.srt.server_args import ServerArgs  # noqa: E402

pytestmark = pytest.mark.sglang

QWEN3_VOCAB = 151_936
H200 = 141 * limits.GIB


@pytest.mark.parametrize("budget,vocab", [(1024, QWEN3_VOCAB), (128, QWEN3_VOCAB), (64, 49_152), (16, 2048)])
def test_graph_batch_cap_is_the_largest_batch_under_the_budget(budget, vocab):
    cap = limits.graph_batch_cap(budget, vocab)
    logits_bytes = lambda bs: bs * budget * vocab * 4  # noqa: E731  [bs * N, V] fp32
    assert logits_bytes(cap) <= limits.GRAPH_LOGITS_BUDGET < logits_bytes(cap + 1) or cap == 1
    if budget == 1024:  # the case: max_bs 16 would keep ~10 GB
        assert logits_bytes(16) > 9.9e9 and cap == 3


def test_sampled_verify_bytes_counts_four_full_vocabulary_fp32_tensors():
    """eagle_sample's sampled branch holds softmax probs, the top-k and top-p renormalised copies and zero draft
    probs, each [B * N, V] fp32: ~5 GB at B 16, N 128 (the issue's figure), measured here by building them."""
    assert abs(limits.sampled_verify_bytes(16, 128, QWEN3_VOCAB) - 4.98e9) < 0.01e9
    B, N, V = 2, 3, 50
    probs = torch.softmax(torch.randn(B * N, V), -1)
    tensors = [probs, probs.clone(), probs.clone(), torch.zeros_like(probs)]
    assert sum(t.numel() * t.element_size() for t in tensors) == limits.sampled_verify_bytes(B, N, V)


@pytest.mark.parametrize("running,budget,fraction", [(32, 1024, 0.8), (64, 512, 0.9), (16, 128, 0.95)])
def test_sampled_verify_memory_refusal_names_values_that_fit(running, budget, fraction):
    with pytest.raises(ValueError) as info:
        limits.check_sampled_verify_memory(running, budget, QWEN3_VOCAB, H200, fraction)
    message = str(info.value)
    assert f"--max-running-requests {running}, --speculative-num-draft-tokens {budget}" in message
    fit = int(message.split("use --max-running-requests ")[1].split(" ")[0])
    limits.check_sampled_verify_memory(fit, budget, QWEN3_VOCAB, H200, fraction)  # the suggestion fits
    with pytest.raises(ValueError):
        limits.check_sampled_verify_memory(fit + 1, budget, QWEN3_VOCAB, H200, fraction)  # and is the largest


def test_sampled_verify_memory_accepts_the_readme_gpu_command():
    """README: Qwen3-8B, N 128, --max-running-requests 16, --mem-fraction-static 0.8 on one H200."""
    limits.check_sampled_verify_memory(16, 128, QWEN3_VOCAB, H200, 0.8)


def _capped(**fields):
    args = ServerArgs(model_path=str(prepare_model("tiny-qwen3")), device="cuda", **fields)
    record_foreign_defaults(args, "test.cap", lambda sa: cap_graph_batch(sa, 1024, QWEN3_VOCAB))
    return resolution_result(args, "cuda_graph_config")


def test_graph_batch_sizes_are_capped_for_a_large_budget(caplog):
    with caplog.at_level("WARNING", logger="jetspec_sglang.glue.args"):
        config = _capped(max_running_requests=16)
    assert config.decode.max_bs == limits.graph_batch_cap(1024, QWEN3_VOCAB) == 3
    assert "decode CUDA graphs captured up to batch 3 (not 16)" in caplog.text


def test_graph_cap_keeps_explicit_flags_and_small_batches(caplog):
    with caplog.at_level("WARNING", logger="jetspec_sglang.glue.args"):
        explicit = _capped(max_running_requests=16, cuda_graph_max_bs_decode=8)
    assert explicit is None or explicit.decode.max_bs in (None, 8)  # not rewritten by JETSPEC
    assert "--cuda-graph-max-bs-decode 3 would keep it under 2 GiB" in caplog.text
    small = _capped(max_running_requests=2)
    assert small is None or small.decode.max_bs in (None, 2)


@pytest.mark.parametrize("width,cuda,want", [(7, True, 8), (8, True, 8), (1, True, 1), (33, True, 64),
                                             (64, True, 64), (7, False, 7)])
def test_fast_topk_width(width, cuda, want):
    assert worker.fast_topk_width(width, cuda) == want


def test_top_k_of_the_power_of_two_width_sliced_is_the_top_k():
    """What the worker does with it, through SGLang's own lilicorr_topk_lse (its torch path on CPU): the first
    7 columns of the top-8 are the top-7, and the log-partition is the same."""
    from sglang.kernels.ops.speculative.lilicorr import lilicorr_topk_lse

    logits = torch.randn(5, 3000, generator=torch.Generator().manual_seed(0))
    v8, i8, lse8 = lilicorr_topk_lse(logits, 8)
    v7, i7, lse7 = lilicorr_topk_lse(logits, 7)
    assert torch.equal(i8[:, :7], i7) and torch.equal(v8[:, :7], v7) and torch.equal(lse8, lse7)


def test_dflash_block_size_lines_are_dropped_and_others_kept():
    def record(msg):
        return logging.LogRecord("sglang.srt.speculative.dflash_worker_v2", logging.INFO, __file__, 1, msg, (), None)

    drop = worker._DFLASH_SIZING_LOGS
    assert not drop.filter(record("DFLASH block size mismatch: using speculative_num_draft_tokens=%s but ..."))
    assert not drop.filter(record("Initialized DFLASH draft runner. attention_backend=%s, model=%s, block_size=%s"))
    assert drop.filter(record("DFLASH draft runner ready. mask_token=%s"))


def test_flat_gives_contiguous_index_tensors_for_single_column_windows():
    """Ladder budget 1: window_BW[:, :1].reshape(-1) is a strided view (stride W), which SGLang's Triton kernels
    (and the strict CPU stand-ins) would misread; worker.flat returns the same values contiguously."""
    window_BW = torch.arange(40).view(8, 5)
    assert not window_BW[:, :1].reshape(-1).is_contiguous()  # the trap
    for width in (1, 2, 5):
        got = worker.flat(window_BW[:, :width])
        assert got.is_contiguous() and torch.equal(got, window_BW[:, :width].reshape(-1))
