"""ShareGPT-format request files from real benchmark prompts, for SGLang's serving benchmark.

Output: a JSON list of {"id", "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": ref}]}
for `python -m sglang.benchmark.serving --dataset-name sharegpt --dataset-path FILE`. That loader keeps only
conversations with >= 2 turns, uses turn 0 as the prompt and sizes the output by the tokens of turn 1 unless
--sharegpt-output-len is given, so turn 1 holds a reference answer: GSM8K's worked answer (calculator notes
removed, ending "The answer is \\boxed{n}."), HumanEval's prompt + canonical solution in a python fence, MT-Bench's
GPT-4 first-turn reference (30 of 80) or else PLACEHOLDER_ANSWER (~200 tokens), ShareGPT's first reply.
Prompts are pre-rendered with the target's chat template by default: run the benchmark WITHOUT
--apply-chat-template (it strips every bos string from rendered prompts, and SmolLM2's bos is <|im_start|>).
With render=False (--raw) turn 0 is the bare user message, for --apply-chat-template. Imports no sglang.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from jetspec_sglang.data.prompts import DATASETS, PromptRecord, render_chat
from jetspec_sglang.data.splits import SPLITS, load_prompts

logger = logging.getLogger(__name__)

PLACEHOLDER_ANSWER = " ".join(
    ["This placeholder stands in for a reference answer the dataset does not ship; only its length matters,"
     " because the serving benchmark sizes the requested output by the tokens of this turn."] * 6
)


def bench_conversations(records: Sequence[PromptRecord], tokenizer=None) -> list[dict]:
    """Two-turn ShareGPT conversations for `records`; turn 0 rendered with `tokenizer`'s chat template if given."""
    if not records:
        raise ValueError("no prompt records given; pick a dataset/split with prompts (MT-Bench has no train split)")
    prompts = render_chat(tokenizer, records) if tokenizer is not None else [r.text for r in records]
    return [{"id": r.id, "conversations": [{"from": "human", "value": p},
                                           {"from": "gpt", "value": r.reference or PLACEHOLDER_ANSWER}]}
            for r, p in zip(records, prompts)]


def write_bench_sharegpt(path: str | os.PathLike, records: Sequence[PromptRecord], tokenizer=None) -> Path:
    """Write `bench_conversations(records, tokenizer)` as one JSON list to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conversations = bench_conversations(records, tokenizer)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(conversations, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    logger.info("wrote %d conversations to %s", len(conversations), path)
    return path


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    from jetspec_sglang.models import MODEL_DIRNAMES, prepare_model

    folder = prepare_model(model) if model in MODEL_DIRNAMES else Path(model)
    if not (Path(folder) / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"--model {model!r}: {folder} has no tokenizer_config.json; pass a model folder "
                                f"or one of {sorted(MODEL_DIRNAMES)}")
    return AutoTokenizer.from_pretrained(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jetspec_sglang.data.bench_file",
                                     description="Write a ShareGPT-format benchmark file from real prompts.")
    parser.add_argument("--datasets", nargs="+", default=["gsm8k", "humaneval", "mtbench"], choices=DATASETS)
    parser.add_argument("--split", default="eval", choices=SPLITS)
    parser.add_argument("--model", default="smollm2",
                        help="target whose chat template renders the prompts: a model folder or a prepared name")
    parser.add_argument("--raw", action="store_true",
                        help="write bare user messages (for --apply-chat-template) instead of rendered prompts")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts of each dataset (default: all)")
    parser.add_argument("--out", required=True, help="output JSON file")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit} must be >= 1 (or omitted for all prompts)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    records = [r for d in args.datasets for r in load_prompts(d, args.split)[: args.limit]]
    tokenizer = None if args.raw else _load_tokenizer(args.model)
    print(write_bench_sharegpt(args.out, records, tokenizer))  # the CLI's result: the file, for shell scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
