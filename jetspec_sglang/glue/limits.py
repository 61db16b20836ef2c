"""GPU memory bounds that grow with the tree budget N (GPU only; no sglang import, pure arithmetic).

Two allocations of SGLang 0.5.23 scale with N x V and are not covered by its KV sizing:
* the target verify CUDA graph keeps a logits buffer [max_bs * N, V] fp32 per captured width (about 10 GB at
  max_bs 16, N 1024, Qwen3-8B's V 151,936): `graph_batch_cap` caps the captured batch sizes instead;
* sampled verification (`eagle_sample`'s sampled branch) materialises about four [B * N, V] fp32 tensors
  (softmax probs, top-k and top-p renormalised copies, zero draft probs; about 5 GB at B 16, N 128): they live in
  the memory outside the KV pool, (1 - --mem-fraction-static) of the device; `check_sampled_verify_memory`
  refuses a start-up whose --max-running-requests x N cannot fit there.
Both are called by glue/args.py (graph cap, at argument resolution) and glue/worker.py (headroom, at start-up).
"""
from __future__ import annotations

GIB = 1 << 30
FP32_BYTES = 4
GRAPH_LOGITS_BUDGET = 2 * GIB  # bytes the captured verify logits buffer may take ([max_bs * N, V] fp32)
SAMPLED_VERIFY_TENSORS = 4  # [B * N, V] fp32 tensors alive at once in eagle_sample's sampled branch
HEADROOM_SHARE = 0.5  # share of the non-KV memory sampled verification may take (activations and graphs need the rest)


def graph_batch_cap(budget: int, vocab: int, limit_bytes: int = GRAPH_LOGITS_BUDGET) -> int:
    """The largest captured decode batch whose verify logits buffer [bs * N, V] fp32 fits in `limit_bytes`
    (at least 1). Example: N 1024, V 151,936, 2 GiB -> 3; N 64 -> 55."""
    return max(1, limit_bytes // (budget * vocab * FP32_BYTES))


def sampled_verify_bytes(max_running: int, budget: int, vocab: int) -> int:
    """Bytes of eagle_sample's sampled-branch temporaries for a full batch: SAMPLED_VERIFY_TENSORS x [B*N, V] fp32."""
    return SAMPLED_VERIFY_TENSORS * max_running * budget * vocab * FP32_BYTES


def check_sampled_verify_memory(max_running: int, budget: int, vocab: int, total_bytes: int,
                                mem_fraction_static: float) -> None:
    """Raise ValueError, naming the flags and the largest values that fit, when a full batch of sampled requests
    would need more than HEADROOM_SHARE of the memory SGLang leaves outside its KV pool."""
    headroom = total_bytes * (1.0 - mem_fraction_static)
    allowed = HEADROOM_SHARE * headroom
    need = sampled_verify_bytes(max_running, budget, vocab)
    if need <= allowed:
        return
    per_request = sampled_verify_bytes(1, budget, vocab)
    fit_running = int(allowed // per_request)
    fit_fraction = 1.0 - need / HEADROOM_SHARE / total_bytes
    fixes = [f"--max-running-requests {fit_running}" if fit_running >= 1 else None,
             f"--mem-fraction-static {fit_fraction:.2f}" if fit_fraction > 0.3 else None,
             "a smaller --speculative-num-draft-tokens"]
    raise ValueError(
        f"JETSPEC sampled verification allocates {SAMPLED_VERIFY_TENSORS} x [max_running_requests x N, V] fp32 = "
        f"{need / GIB:.1f} GiB at --max-running-requests {max_running}, --speculative-num-draft-tokens {budget}, "
        f"vocabulary {vocab}, more than {HEADROOM_SHARE:.0%} of the {headroom / GIB:.1f} GiB left outside the KV "
        f"pool ((1 - --mem-fraction-static {mem_fraction_static}) x {total_bytes / GIB:.1f} GiB); use "
        + " or ".join(f for f in fixes if f))
