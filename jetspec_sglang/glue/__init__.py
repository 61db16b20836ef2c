"""The only package that imports sglang. `register()` is the `sglang.srt.plugins` entry point."""
import logging

logger = logging.getLogger(__name__)


def register() -> None:
    """Entry point run by sglang.srt.plugins.load_plugins() in every SGLang process; import-light."""
    logger.debug("jetspec-sglang plugin loaded (registration lands with the plugin issue)")
