"""Benchmark prompt formats (jetspec-method.md 10.8) and their rendering with a target's chat template.

One user turn per prompt: GSM8K adds the step-by-step/boxed suffix, HumanEval (and pycode, its stdlib-cut
twin) wraps the prompt in the "Write a solution ..." request, MT-Bench and ShareGPT use the first user turn as
is. `render_chat` applies the tokenizer's own chat template with add_generation_prompt=True (enable_thinking=False, as JetSpec's benchmark
passes for Qwen3; templates that do not use the flag ignore it). Imports no sglang.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

GSM8K_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL_TEMPLATE = (
    "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{prompt}\n```"
)
DATASETS = ("sharegpt", "gsm8k", "humaneval", "mtbench", "pycode")  # pycode: stdlib functions, train only


@dataclass(frozen=True)
class PromptRecord:
    dataset: str  # one of DATASETS
    id: str  # stable id: "gsm8k/17", "HumanEval/3", "mtbench/81", "sharegpt/<file index>/<sharegpt id>",
    #          "pycode/<stdlib path>:<qualname>"
    index: int  # position in the source file (GSM8K, HumanEval, MT-Bench, ShareGPT record order)
    source_text: str  # the dataset's own question / code prompt / first user turn, unformatted
    text: str  # the user message sent to the target (format of jetspec-method.md 10.8)
    reference: str | None  # a reference answer where the dataset has one, else None


def format_gsm8k(question: str) -> str:
    """'Natalia sold 48 clips ...' -> 'Natalia sold 48 clips ...\\nPlease reason step by step, ... \\boxed{}.'"""
    return question + GSM8K_SUFFIX


def format_humaneval(prompt: str) -> str:
    """The HumanEval code prompt inside the JetSpec solution request (fenced as python)."""
    return HUMANEVAL_TEMPLATE.format(prompt=prompt)


def normalize_text(text: str) -> str:
    """Comparison key for overlap checks: NFKC, lower case, whitespace runs collapsed, ends stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def render_chat(tokenizer, texts: str | Sequence[str] | Sequence[PromptRecord]) -> list[str]:
    """Each user message rendered as a single-turn chat ending in the assistant header.

    Args:
        tokenizer: a transformers tokenizer with a chat template (the target's).
        texts: user messages, or PromptRecords (their `.text` is used).
    Returns one string per input, e.g. ChatML '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template; "
                         f"prepare the target with `python -m jetspec_sglang.models prepare NAME` or set "
                         f"tokenizer.chat_template")
    rendered = []
    for item in texts:
        text = item.text if isinstance(item, PromptRecord) else item
        if not isinstance(text, str):
            raise TypeError(f"render_chat expects str or PromptRecord items, got {type(item).__name__}")
        rendered.append(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True, enable_thinking=False))
    return rendered


def encode_chat(tokenizer, texts: str | Sequence[str] | Sequence[PromptRecord]) -> list[list[int]]:
    """Token ids of `render_chat(tokenizer, texts)`; no extra special tokens (the template already wrote them).

    Returns one list[int] per input (int token ids, variable length S_i), e.g. for SmolLM2 starting [1, 9690, ...].
    """
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in render_chat(tokenizer, texts)]
