"""The only package that imports sglang. `register()` is the `sglang.srt.plugins` entry point.

SGLang runs it in every process (launcher, scheduler, detokenizer) through load_plugins(); it must stay
import-light, idempotent, and harmless for servers that do not use JETSPEC. It registers the JETSPEC algorithm
(algo.py), the hooks (hooks.py; applied by SGLang right after all plugins ran) and, on CPU, the torch_native
draft attention backend choice. Heavy modules (worker, draft model) load only when JETSPEC is used.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

SUPPORTED_SGLANG = ("0.5.23",)
_REGISTERED = False


class SGLangVersionError(RuntimeError):
    """The installed SGLang is not a version this plugin was built and tested against."""


def check_sglang_version() -> str:
    import sglang

    version = getattr(sglang, "__version__", "unknown")
    if version not in SUPPORTED_SGLANG:
        raise SGLangVersionError(
            f"jetspec-sglang supports sglang {SUPPORTED_SGLANG}, found sglang=={version}; install "
            f"'sglang=={SUPPORTED_SGLANG[-1]}' or a jetspec-sglang release built for {version}"
        )
    return version


def on_cpu() -> bool:
    """SGLang's own CPU switch (sglang.srt.utils.is_cpu), read without importing sglang.srt.utils."""
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "0") == "1"


def register() -> None:
    """Register JETSPEC with SGLang (idempotent). Raises on an unsupported SGLang version."""
    global _REGISTERED
    if _REGISTERED:
        return
    version = check_sglang_version()
    from sglang.srt.speculative import spec_registry
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from jetspec_sglang.glue.algo import ALGO_NAME, JetSpecAlgo, worker_factory
    from jetspec_sglang.glue.args import validate_server_args
    from jetspec_sglang.glue.hooks import register_hooks

    if spec_registry.get_spec(ALGO_NAME) is None:
        SpeculativeAlgorithm.register(ALGO_NAME, supports_overlap=True, validate_server_args=validate_server_args,
                                      spec_class=JetSpecAlgo)(worker_factory)
    cpu = on_cpu()
    if cpu:
        from sglang.srt.arg_groups.choices import DRAFT_ATTENTION_BACKEND_CHOICES, add_draft_attention_backend_choices

        if "torch_native" not in DRAFT_ATTENTION_BACKEND_CHOICES:
            # The JETSPEC draft block runs on torch_native on CPU (resolve_draft_worker_attention_backend would
            # otherwise fall back to flashinfer).
            add_draft_attention_backend_choices(["torch_native"])
    register_hooks(on_cpu=cpu)
    _REGISTERED = True
    logger.info("jetspec-sglang: registered %s for sglang %s (cpu=%s)", ALGO_NAME, version, cpu)
