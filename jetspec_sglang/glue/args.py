"""Server-argument validation and defaults for JETSPEC (a plugin cannot add flags; JETSPEC_* variables fill in).

Flag mapping: --speculative-num-draft-tokens = tree budget N (root included); --speculative-num-steps = depth L
(draft block L + 1, and N is the largest budget of JETSPEC_BUDGET=auto); --speculative-draft-model-path = the head.
Width, tree algorithm, ops backend and the budget policy (auto by default, fixed, ladder) come from JETSPEC_*
variables (jetspec_sglang.config). Both functions receive SGLang's recording stand-in (overrides.py:139): reads
see the resolving view, writes become declared resolutions.
Every rejection names the flag or variable, the value and the fix, and happens before any process starts.
"""
from __future__ import annotations

import logging
import os

from jetspec_sglang.budget import policy_of
from jetspec_sglang.config import MAX_BUDGET, ConfigError, config_from_env, cpu_packed_weights

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 64  # nodes incl. root when neither the flag nor JETSPEC_BUDGET is given
GPU_TARGET_BACKENDS = ("flashinfer", "triton")  # backends whose TARGET_VERIFY honours a FULL custom mask
CPU_BACKENDS = ("torch_native", "intel_amx")  # intel_amx resolves to torch_native without the AMX CPU kernels
DEFAULT_MAX_RUNNING = {"cpu": 16, "gpu": 32}


class JetSpecArgError(ValueError):
    """A JETSPEC server flag combination SGLang 0.5.23 + this plugin cannot serve."""


def _is_cpu(sa) -> bool:
    return (getattr(sa, "device", None) or "") == "cpu"


def read_head_config(sa) -> dict:
    """The draft head's config.json as a dict (local folder or hub id); fails with the flag and the fix."""
    path = sa.speculative_draft_model_path
    if not path:
        raise JetSpecArgError(
            "JETSPEC needs a draft head: add --speculative-draft-model-path DIR (a JetSpec/DFlash head checkpoint, "
            "e.g. the one shipped in jetspec_sglang/heads/)"
        )
    local = os.path.join(str(path), "config.json")
    if not os.path.exists(str(path)) and (os.path.isabs(str(path)) or str(path).startswith((".", "~"))):
        raise JetSpecArgError(f"--speculative-draft-model-path {path}: no such folder; give the folder of a JetSpec "
                              "head (config.json + model.safetensors) or a hub id")
    if os.path.isdir(str(path)):
        if not os.path.isfile(local):
            raise JetSpecArgError(f"--speculative-draft-model-path {path}: no config.json there; point it at a "
                                  "JetSpec head folder (config.json + model.safetensors)")
        import json

        try:
            with open(local) as f:
                return json.load(f)
        except ValueError as e:
            raise JetSpecArgError(f"--speculative-draft-model-path {path}: config.json is not valid JSON ({e}); "
                                  "re-download or re-save the head") from None
    from sglang.srt.utils.hf_transformers_utils import get_config

    try:
        return get_config(str(path), trust_remote_code=bool(sa.trust_remote_code),
                          revision=sa.speculative_draft_model_revision).to_dict()
    except Exception as e:  # re-raised with the flag named
        raise JetSpecArgError(f"--speculative-draft-model-path {path}: cannot read the head config ({e}); give a "
                              "local folder or a reachable hub id") from e


def head_block_size(sa, head: dict) -> int:
    """The head's trained block with the official precedence (draft_head_config.block_size_of: top-level
    block_size, then dflash_config.block_size)."""
    from jetspec_sglang.draft_head_config import DraftHeadError, block_size_of

    try:
        return block_size_of(head)
    except DraftHeadError as e:
        raise JetSpecArgError(f"--speculative-draft-model-path {sa.speculative_draft_model_path}: {e}") from None


def resolve_shape(sa, head: dict) -> tuple[int, int]:
    """(budget N, depth L) from the flags, then JETSPEC_BUDGET / JETSPEC_DEPTH, then the head and defaults."""
    block = head_block_size(sa, head)
    env = config_from_env()  # validates every JETSPEC_* variable, even those used later
    depth = sa.speculative_num_steps or (env.depth if os.environ.get("JETSPEC_DEPTH") else block - 1)
    budget = sa.speculative_num_draft_tokens or (env.budget if os.environ.get("JETSPEC_BUDGET") else DEFAULT_BUDGET)
    return int(budget), int(depth)


def validate_server_args(sa) -> None:
    """Reject every combination the JETSPEC worker does not support (speculative_hook.py:245, before defaults)."""
    head = read_head_config(sa)
    archs = head.get("architectures") or []
    if "dflash_config" not in head:
        raise JetSpecArgError(f"--speculative-draft-model-path {sa.speculative_draft_model_path}: config.json has no "
                              f"dflash_config (architectures={archs}); JETSPEC needs a JetSpec/DFlash-format head")
    check_head_files(sa, head)
    try:
        budget, depth = resolve_shape(sa, head)
        config_from_env(budget=budget, depth=depth)
        cpu_packed_weights()
    except ConfigError as e:
        raise JetSpecArgError(str(e)) from None
    block = head_block_size(sa, head)
    causal = bool((head.get("dflash_config") or {}).get("causal_head", False))
    if depth > block - 1 and causal:
        # The official engine drafts block = depth + 1 whatever the head's block_size; a block-causal head's row d
        # never sees rows > d, so deeper rows only meet positions it was not trained at.
        logger.warning("--speculative-num-steps %d exceeds the head's trained depth block_size-1=%d: draft positions "
                       "past %d are extrapolated (acceptance there may be low); greedy output is unaffected", depth,
                       block - 1, block - 1)
    checks = [
        (depth > block - 1 and not causal,
         f"--speculative-num-steps {depth} exceeds the bidirectional head's trained depth block_size-1={block - 1} "
         f"(every row of its block attends to every other, so a longer block changes all of them); use "
         f"--speculative-num-steps <= {block - 1}"),
        (budget < depth + 1, f"--speculative-num-draft-tokens {budget} < depth + 1 = {depth + 1}: the tree cannot hold "
                             "one full path; raise the budget or lower --speculative-num-steps"),
        (budget > MAX_BUDGET, f"--speculative-num-draft-tokens {budget} exceeds SGLang's tree-verify limit {MAX_BUDGET}"),
        ((sa.pp_size or 1) != 1, f"--pp-size {sa.pp_size}: JETSPEC supports pipeline parallel size 1 only; drop --pp-size"),
        (_dp_attention(sa), "--enable-dp-attention: JETSPEC does not support DP attention; remove the flag"),
        ((sa.disaggregation_mode or "null") != "null",
         f"--disaggregation-mode {sa.disaggregation_mode}: JETSPEC does not support PD disaggregation; remove it"),
        (bool(sa.enable_hierarchical_cache), "--enable-hierarchical-cache: not supported with JETSPEC; remove it"),
        (bool(getattr(sa, "enable_unified_memory", False)), "--enable-unified-memory: not supported with JETSPEC"),
        (bool(sa.speculative_use_rejection_sampling),
         "--speculative-use-rejection-sampling: JETSPEC drafts are deterministic (no draft q); remove the flag - "
         "sampled verification is already lossless"),
        (bool(sa.speculative_adaptive), "--speculative-adaptive: use JETSPEC_BUDGET_LADDER for load-adaptive budgets"),
        (sa.speculative_eagle_topk not in (None, 1),
         f"--speculative-eagle-topk {sa.speculative_eagle_topk}: JETSPEC sets the tree width with JETSPEC_TREE_WIDTH"),
        (sa.speculative_draft_window_size is not None,
         "--speculative-draft-window-size: the compact draft cache is not supported by JETSPEC; remove the flag"),
        (bool(getattr(sa, "enable_watermark", False)), "--enable-watermark: not supported with JETSPEC"),
    ]
    backend = sa.attention_backend
    if _is_cpu(sa):
        checks.append((backend not in (None,) + CPU_BACKENDS,
                       f"--attention-backend {backend}: on CPU JETSPEC verifies trees with torch_native; use "
                       "--attention-backend torch_native (or omit it)"))
    else:
        checks.append((backend not in (None,) + GPU_TARGET_BACKENDS,
                       f"--attention-backend {backend}: it ignores the tree mask in TARGET_VERIFY (fa3 with topk 1, "
                       f"trtllm, fa4); use --attention-backend flashinfer or triton"))
        draft_backend = sa.speculative_draft_attention_backend
        checks.append((draft_backend not in (None,) + GPU_TARGET_BACKENDS,
                       f"--speculative-draft-attention-backend {draft_backend}: use flashinfer or triton"))
    for bad, message in checks:
        if bad:
            raise JetSpecArgError(message)


def check_head_files(sa, head: dict) -> None:
    """The head's config against the target's config and, for a local head, its safetensors headers (keys and
    shapes; no tensor data is read). SGLang would otherwise start with missing weights left uninitialised, or
    fail only when the scheduler loads them."""
    from jetspec_sglang.draft_head_config import DraftHeadConfig, DraftHeadError, check_against_target

    path = sa.speculative_draft_model_path
    try:
        config = DraftHeadConfig.from_dict(head)
    except (DraftHeadError, KeyError, TypeError, ValueError) as e:
        raise JetSpecArgError(f"--speculative-draft-model-path {path}: config.json is not a usable JetSpec head "
                              f"config ({type(e).__name__}: {e}); re-download or re-save the head") from None
    from sglang.srt.utils.hf_transformers_utils import get_config

    target = get_config(sa.model_path, trust_remote_code=bool(sa.trust_remote_code), revision=sa.revision)
    try:
        check_against_target(config, target)
    except DraftHeadError as e:
        raise JetSpecArgError(f"--speculative-draft-model-path {path} does not fit --model-path {sa.model_path}: "
                              f"{e}") from None
    if os.path.isdir(str(path)):
        check_head_weights(str(path), config)
    check_draft_vocab(path, int(getattr(target, "vocab_size", 0) or 0))


def check_draft_vocab(path, vocab_size: int) -> None:
    """The draft vocabulary JETSPEC_DRAFT_VOCAB asks for must resolve now (a broken draft_vocab.json, one built for
    another vocabulary, a size without a file or under the tree width), not when the worker starts."""
    from jetspec_sglang.draft_vocab import resolve_draft_vocab

    try:
        config = config_from_env()
    except ConfigError as e:
        raise JetSpecArgError(str(e)) from None
    try:
        resolve_draft_vocab(str(path), config.draft_vocab, vocab_size, config.width)
    except ConfigError as e:  # DraftVocabError included
        raise JetSpecArgError(f"--speculative-draft-model-path {path}: {e}") from None


def check_head_weights(path: str, config) -> None:
    """Keys and shapes of every *.safetensors shard (header only) against the official layout of `config`."""
    import glob

    import torch
    from safetensors import safe_open

    from jetspec_sglang.draft_head_config import CHECKPOINT_PREFIX, IGNORED_KEY_SUFFIXES, DraftHeadError
    from jetspec_sglang.draft_head_config import check_state_dict

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise JetSpecArgError(f"--speculative-draft-model-path {path}: no *.safetensors file; the head's weights "
                              "are missing (re-download the head; .bin checkpoints must be converted)")
    shapes = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    name = key[len(CHECKPOINT_PREFIX):] if key.startswith(CHECKPOINT_PREFIX) else key
                    if not name.endswith(IGNORED_KEY_SUFFIXES):
                        shapes[name] = torch.empty(f.get_slice(key).get_shape(), device="meta")
        except Exception as e:  # SafetensorError / OSError on a truncated or corrupt file; re-raised with the flag
            raise JetSpecArgError(f"--speculative-draft-model-path {path}: {os.path.basename(file)} is corrupt or "
                                  f"truncated ({type(e).__name__}: {e}); re-download or re-save the head") from None
    try:
        check_state_dict(config, shapes, f"--speculative-draft-model-path {path}")
    except DraftHeadError as e:
        raise JetSpecArgError(str(e)) from None


def target_dtype_name(sa) -> str:
    """The dtype SGLang gives the target for this --dtype (model_config.py _get_and_verify_dtype), as a flag value."""
    import torch
    from sglang.srt.configs.model_config import _get_and_verify_dtype
    from sglang.srt.utils.hf_transformers_utils import get_config

    target = get_config(sa.model_path, trust_remote_code=bool(sa.trust_remote_code), revision=sa.revision)
    dtype = _get_and_verify_dtype(target.get_text_config(), sa.dtype or "auto")
    names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    if dtype not in names:
        raise JetSpecArgError(f"--dtype {sa.dtype}: the target resolves to {dtype}; JETSPEC serves float32, "
                              "float16 or bfloat16 targets; pass --dtype float16 or --dtype bfloat16")
    return names[dtype]


def resolve_dtype(sa, head: dict) -> None:
    """Run the head in the target's dtype. SGLang resolves --dtype once per model config: with `auto` an fp32
    target becomes float16 while a bf16 head stays bfloat16, and the first decode step then fails in the head's
    fc (Half != BFloat16). Writing the target's resolved dtype makes both models (and the draft KV) agree; an
    explicit --dtype already applies to both."""
    if (sa.dtype or "auto") != "auto":
        return
    sa.dtype = target_dtype_name(sa)
    head_dtype = head.get("dtype") or head.get("torch_dtype") or "float32"
    logger.info("JETSPEC: --dtype auto resolves to %s for the target; the head (stored as %s) runs in %s too",
                sa.dtype, head_dtype, sa.dtype)


def handle_server_args(sa) -> None:
    """Defaults (speculative_hook.py:269): generic SGLang sizing expressed in JetSpec terms."""
    head = read_head_config(sa)
    budget, depth = resolve_shape(sa, head)
    resolve_dtype(sa, head)
    sa.speculative_num_steps = depth  # generic sizing; accept_index width = depth + 1
    sa.speculative_num_draft_tokens = budget  # verify width and the 2N KV reservation per step
    sa.speculative_eagle_topk = 1  # avoids EAGLE's page>1 * topk over-reservation (allocation_sizing.py:52)
    sa.enable_mixed_chunk = False  # supports_mixed_chunk() is False
    if _is_cpu(sa):
        sa.attention_backend = "torch_native"
        sa.speculative_draft_attention_backend = "torch_native"
    else:
        sa.attention_backend = sa.attention_backend or "flashinfer"
        sa.speculative_draft_attention_backend = sa.speculative_draft_attention_backend or sa.attention_backend
    if sa.max_running_requests is None:
        sa.max_running_requests = DEFAULT_MAX_RUNNING["cpu" if _is_cpu(sa) else "gpu"]
    policy = policy_of(config_from_env(budget=budget, depth=depth))
    if policy != "fixed" and not _is_cpu(sa):
        # The target verify graph is captured at one width (N); budgets below N would replay no graph. Run decode
        # eagerly rather than mixing graphed and eager steps (docs/auto-budget.md, "CUDA graphs").
        from sglang.srt.model_executor.cuda_graph_config import Backend, CudaGraphConfig, Phase, with_phase

        current = sa.cuda_graph_config or CudaGraphConfig()  # unresolved in SGLang's unit-test pattern
        sa.cuda_graph_config = with_phase(current, Phase.DECODE, backend=Backend.DISABLED)
        logger.warning("JETSPEC budget policy %s: decode CUDA graphs are disabled (one captured width cannot "
                       "serve several budgets); set JETSPEC_BUDGET=%d (a fixed budget) to keep graphs", policy, budget)
    elif not _is_cpu(sa):
        cap_graph_batch(sa, budget, int(head["vocab_size"]))
    logger.info("JETSPEC budget=%d depth=%d width=%s head=%s", budget, depth,
                os.environ.get("JETSPEC_TREE_WIDTH", "7 (default)"), sa.speculative_draft_model_path)


def cap_graph_batch(sa, budget: int, vocab: int) -> None:
    """Cap the captured decode batch sizes so the target verify graph's logits buffer [max_bs * N, V] fp32 stays
    within limits.GRAPH_LOGITS_BUDGET (larger batches run eagerly). Explicit --cuda-graph-max-bs-decode /
    --cuda-graph-bs-decode are kept, with a warning of the cost."""
    from sglang.srt.model_executor.cuda_graph_config import Backend, CudaGraphConfig, Phase, with_phase

    from jetspec_sglang.glue.limits import FP32_BYTES, GIB, GRAPH_LOGITS_BUDGET, graph_batch_cap

    current = sa.cuda_graph_config or CudaGraphConfig()
    decode = current.decode
    if decode.backend == Backend.DISABLED:
        return
    cap = graph_batch_cap(budget, vocab)
    max_bs = decode.max_bs or (max(decode.bs) if decode.bs else None) or sa.max_running_requests
    if max_bs is None or max_bs <= cap:
        return
    cost = max_bs * budget * vocab * FP32_BYTES / GIB
    if sa.cuda_graph_max_bs_decode is not None or sa.cuda_graph_bs_decode is not None:
        logger.warning("JETSPEC: captured decode batches up to %d keep a %.1f GiB verify logits buffer "
                       "([max_bs x N, V] fp32, N=%d); --cuda-graph-max-bs-decode %d would keep it under %d GiB",
                       max_bs, cost, budget, cap, GRAPH_LOGITS_BUDGET // GIB)
        return
    bs = [b for b in decode.bs if b <= cap] if decode.bs else None
    sa.cuda_graph_config = with_phase(current, Phase.DECODE, max_bs=cap, bs=bs or None)
    logger.warning("JETSPEC: decode CUDA graphs captured up to batch %d (not %d): the verify graph's logits buffer "
                   "[max_bs x N, V] fp32 would take %.1f GiB at N=%d; larger batches run eagerly. Set "
                   "--cuda-graph-max-bs-decode to override", cap, max_bs, cost, budget)


def _dp_attention(sa) -> bool:
    from sglang.srt.runtime_context import attn_dp_enabled_of

    return bool(attn_dp_enabled_of(sa)) or bool(getattr(sa, "enable_dp_attention", False))
