"""The HookRegistry hooks JETSPEC installs, each inert unless the running algorithm is JETSPEC (or, for the CPU
hooks, unless a speculative TARGET_VERIFY forward runs on CPU, which plain decoding never does; the CPU packed-
weight hooks act on a plain server only when JETSPEC_CPU_PACKED_WEIGHTS=on asks for it, bit-identically).
Every hook has a ledger entry in patches/README.md (target, why, how, remove when).
"""
from __future__ import annotations

import logging

from jetspec_sglang.glue.algo import ALGO_NAME

logger = logging.getLogger(__name__)

MODEL_CONFIG = "sglang.srt.configs.model_config.ModelConfig._config_draft_model"
GRAPH_SPEC_INFO = "sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner.get_spec_info"
EXTEND_KWARGS = "sglang.srt.model_executor.model_runner.ModelRunner._extend_forward_kwargs"
VALIDATE_REQUEST = "sglang.srt.speculative.dflash_utils.validate_dflash_request"
ALGO_ALIAS = "sglang.srt.arg_groups.speculative_hook._resolve_speculative_algorithm_alias"
TORCH_NATIVE_EXTEND = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend"
ROW_HEADROOM = "sglang.srt.mem_cache.allocation_sizing.get_req_to_token_extra_context_len"
SERVER_INFO = ("sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController"
               "._add_speculative")
PROFILE_RUN_BATCH = "sglang.srt.managers.scheduler.Scheduler.run_batch"
LOAD_MODEL = "sglang.srt.model_executor.model_runner.ModelRunner.load_model"
LINEAR_APPLY = "sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply"
LM_HEAD = "sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head"
CPU_PACKED_TARGETS = [LOAD_MODEL, LINEAR_APPLY, LM_HEAD]


def is_jetspec(algo) -> bool:
    return getattr(algo, "name", None) == ALGO_NAME or str(algo).upper() == ALGO_NAME


def rewrite_draft_architecture(result, self, *args, **kwargs):
    """AFTER ModelConfig._config_draft_model: a DFlash-format head loads as JetSpecDraftModel under JETSPEC."""
    if not (self.is_draft_model and (self.speculative_algorithm or "").upper() == ALGO_NAME):
        return result
    from jetspec_sglang.glue.draft_model import ARCHITECTURE, DFLASH_ARCHITECTURES, JetSpecDraftModel
    from sglang.srt.models.registry import ModelRegistry

    ModelRegistry.models[ARCHITECTURE] = JetSpecDraftModel
    archs = self.hf_config.architectures
    if archs and archs[0] in DFLASH_ARCHITECTURES:
        archs[0] = ARCHITECTURE
    elif not archs or archs[0] != ARCHITECTURE:
        raise ValueError(f"--speculative-draft-model-path: architectures={archs}; JETSPEC loads heads in the "
                         f"JetSpec/DFlash format (architectures {DFLASH_ARCHITECTURES})")
    return result


def graph_spec_info(original, self, num_tokens):
    """AROUND DecodeCudaGraphRunner.get_spec_info: capture the target verify graph WITH the tree mask buffer.

    The dflash-family branch captures the target without a mask for FlashInfer/Triton (dflash_utils.py:32),
    which would verify the tree causally; capture and replay must agree on the mask. The draft runner keeps the
    original (maskless, block-causal) spec info. GPU only; never executed on this project's CPU CI.
    """
    if not is_jetspec(self.model_runner.spec_algorithm) or self.model_runner.is_draft_worker:
        return original(self, num_tokens)
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode
    from sglang.srt.speculative.eagle_info import EagleVerifyInput

    return EagleVerifyInput(
        draft_token=None, custom_mask=self.buffers.custom_mask, positions=None, retrieve_index=None,
        retrieve_next_token=None, retrieve_next_sibling=None, retrieve_cum_len=None,
        spec_steps=int(self.speculative_num_steps), topk=-1, draft_token_num=self.captured_req_width,
        capture_hidden_mode=CaptureHiddenMode.FULL, seq_lens_sum=None, seq_lens_cpu=None,
    )


def keep_embeds_dtype(result, self, forward_batch, *args, **kwargs):
    """AFTER ModelRunner._extend_forward_kwargs: the JETSPEC draft block keeps its embeddings in the model
    dtype (model_runner.py:1772 hard-casts input_embeds to bf16, which rounds an fp32 draft's inputs)."""
    if (self.is_draft_worker and is_jetspec(self.spec_algorithm) and forward_batch.input_embeds is not None
            and forward_batch.replace_embeds is None and "input_embeds" in result):
        result["input_embeds"] = forward_batch.input_embeds.to(self.model_config.dtype)
    return result


def validate_request(original, req, enable_overlap, *args, **kwargs):
    """AROUND validate_dflash_request (scheduler.py:3144): per-request features JETSPEC cannot serve losslessly
    are refused with a message (the request is aborted, the server keeps serving)."""
    message = original(req, enable_overlap, *args, **kwargs)
    if message is not None:
        return message
    from sglang.srt.runtime_context import get_spec

    if (get_spec().speculative_algorithm or "").upper() != ALGO_NAME:
        return None
    from jetspec_sglang.glue.requests import unsupported_reason

    return unsupported_reason(req)


def resolve_algorithm_alias(original, speculative_algorithm, speculative_draft_model_path, *args, **kwargs):
    """AROUND speculative_hook._resolve_speculative_algorithm_alias: SGLang reads the draft config there (its Gemma4
    alias check, speculative_hook.py:93) before any algorithm validates its flags, so a missing folder, a folder
    without config.json or a corrupt config.json would fail with a bare transformers error. JETSPEC has no alias:
    read the head config with our messages (flag + fix) and return the name unchanged."""
    if not is_jetspec(speculative_algorithm):
        return original(speculative_algorithm, speculative_draft_model_path, *args, **kwargs)
    from types import SimpleNamespace

    from jetspec_sglang.glue.args import read_head_config

    trust = args[0] if args else kwargs.get("trust_remote_code", False)
    extra = (args[1] if len(args) > 1 else kwargs.get("kwargs")) or {}
    read_head_config(SimpleNamespace(speculative_draft_model_path=speculative_draft_model_path,
                                     trust_remote_code=trust,
                                     speculative_draft_model_revision=extra.get("revision")))
    return speculative_algorithm


def widen_row_headroom(result, *args, **kwargs):
    """AFTER get_req_to_token_extra_context_len: under JETSPEC the req_to_token row holds the spec-v2 decode
    reservation. Each decode step reserves committed + 2N slots (dflash_info_v2.prepare_for_decode,
    eagle_utils.eagle_prepare_for_decode), but at page size 1 the row is only context + 4 + N wide
    (allocation_sizing.py:107; the widening at :114 covers page > 1 and UNO only). Near the context limit the
    reservation ran past the row: the CPU assign dropped the slots and the GPU kernel writes into the next row,
    so the slots were never freed (pool leak). Committed < context, so reserve + page - 1 of headroom suffices.
    The worker checks the resulting row width at its first decode step (worker._check_row_headroom)."""
    from sglang.srt.runtime_context import get_spec

    if not is_jetspec(get_spec().speculative_algorithm):
        return result
    return max(result, row_headroom())


def row_headroom() -> int:
    """Slots a req_to_token row needs beyond the context: the decode reservation plus page rounding."""
    from sglang.srt.mem_cache.allocation_sizing import get_alloc_page_size, get_alloc_reserve_per_decode

    return get_alloc_reserve_per_decode() + get_alloc_page_size() - 1


def report_budget(result, self, state, *args, **kwargs):
    """AFTER SchedulerInternalStateController._add_speculative: /get_server_info's internal state gains
    `jetspec_budget`, the budget policy's choice counts and (auto) its estimates (glue/budget_feed.py)."""
    scheduler = self.scheduler
    feed = getattr(scheduler.draft_worker, "budget_feed", None)
    if is_jetspec(scheduler.spec_algorithm) and feed is not None:
        state["jetspec_budget"] = feed.report()
    return result


def profile_run_batch(original, self, batch, *args, **kwargs):
    """AROUND Scheduler.run_batch, registered only when JETSPEC_PROFILE is set (plain and JETSPEC servers): brackets
    every decode step for jetspec_sglang.profiling (the worker laps its phases inside the bracket)."""
    from jetspec_sglang import profiling

    prof = profiling.active()
    mode = batch.forward_mode
    if prof is None or mode.is_extend() or mode.is_idle() or batch.is_extend_in_batch:
        if prof is not None:
            prof.other_batch()
        return original(self, batch, *args, **kwargs)
    prof.step_begin(len(batch.reqs))
    try:
        return original(self, batch, *args, **kwargs)
    finally:
        prof.step_end()


def register_hooks(on_cpu: bool) -> None:
    """Register (SGLang applies them at the end of load_plugins, in every process)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(MODEL_CONFIG, rewrite_draft_architecture, HookType.AFTER)
    HookRegistry.register(GRAPH_SPEC_INFO, graph_spec_info, HookType.AROUND)
    HookRegistry.register(EXTEND_KWARGS, keep_embeds_dtype, HookType.AFTER)
    HookRegistry.register(VALIDATE_REQUEST, validate_request, HookType.AROUND)
    HookRegistry.register(ALGO_ALIAS, resolve_algorithm_alias, HookType.AROUND)
    HookRegistry.register(ROW_HEADROOM, widen_row_headroom, HookType.AFTER)
    HookRegistry.register(SERVER_INFO, report_budget, HookType.AFTER)
    if on_cpu:
        from jetspec_sglang.glue.cpu_attention import forward_extend_target_verify

        HookRegistry.register(TORCH_NATIVE_EXTEND, forward_extend_target_verify, HookType.AROUND)
        from jetspec_sglang.glue import cpu_packed

        HookRegistry.register(LOAD_MODEL, cpu_packed.pack_after_load, HookType.AFTER)
        HookRegistry.register(LINEAR_APPLY, cpu_packed.linear_apply, HookType.AROUND)
        HookRegistry.register(LM_HEAD, cpu_packed.compute_lm_head, HookType.AROUND)
    from jetspec_sglang import profiling

    if profiling.enabled():
        HookRegistry.register(PROFILE_RUN_BATCH, profile_run_batch, HookType.AROUND)


def applied_hooks(on_cpu: bool) -> list[str]:
    """Targets that must be patched in this process; the worker checks them at start-up (apply_hooks only logs
    failures, so a hook that did not apply would otherwise surface as wrong tokens)."""
    return [MODEL_CONFIG, GRAPH_SPEC_INFO, EXTEND_KWARGS, VALIDATE_REQUEST, ALGO_ALIAS, ROW_HEADROOM,
            SERVER_INFO] + \
        ([TORCH_NATIVE_EXTEND] + CPU_PACKED_TARGETS if on_cpu else [])
