"""The HookRegistry hooks JETSPEC installs, each inert unless the running algorithm is JETSPEC (or, for the CPU
hooks, unless a speculative TARGET_VERIFY forward runs on CPU, which plain decoding never does).
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
TORCH_NATIVE_EXTEND = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend"


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


def register_hooks(on_cpu: bool) -> None:
    """Register (SGLang applies them at the end of load_plugins, in every process)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(MODEL_CONFIG, rewrite_draft_architecture, HookType.AFTER)
    HookRegistry.register(GRAPH_SPEC_INFO, graph_spec_info, HookType.AROUND)
    HookRegistry.register(EXTEND_KWARGS, keep_embeds_dtype, HookType.AFTER)
    HookRegistry.register(VALIDATE_REQUEST, validate_request, HookType.AROUND)
    if on_cpu:
        from jetspec_sglang.glue.cpu_attention import forward_extend_target_verify

        HookRegistry.register(TORCH_NATIVE_EXTEND, forward_extend_target_verify, HookType.AROUND)


def applied_hooks(on_cpu: bool) -> list[str]:
    """Targets that must be patched in this process; the worker checks them at start-up (apply_hooks only logs
    failures, so a hook that did not apply would otherwise surface as wrong tokens)."""
    return [MODEL_CONFIG, GRAPH_SPEC_INFO, EXTEND_KWARGS, VALIDATE_REQUEST] + ([TORCH_NATIVE_EXTEND] if on_cpu else [])
