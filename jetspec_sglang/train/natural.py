"""Natural text as training sequences: the datasets' own answers to TRAIN-split prompts, no regeneration.

`python -m jetspec_sglang.train natural --plan sharegpt:16000,gsm8k:1000,humaneval:100 --out natural.jsonl`
writes records in the layout of `train regenerate` / `train generate` (responses.jsonl), so `train online --data`
reads them beside regenerated ones:
  {"key": "<id>@natural", "id", "dataset", "split": "train", "temperature": null, "source": "natural",
   "prompt_ids": chat-templated user turn, "response_ids": the dataset's answer + <|im_end|>, "finished": true}.
The answers are ShareGPT's first assistant reply, GSM8K's worked solution (calculator notes removed) and
HumanEval's prompt + canonical solution in a code fence (splits.py). Why this is a valid teacher signal: the
online trainer distils the target's own distribution at every position of whatever text it reads, so natural text
costs no target generation (the GPU bottleneck: ~134 ms per HF `generate` step on an H200) at the price of
contexts the target did not write itself. `temperature: null` keeps these records out of the held-out greedy
scores, which measure agreement on the target's own outputs. Prompts come only from `load_prompts(dataset,
"train")`; `check_no_eval_overlap` re-checks them. Imports no sglang.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import random
from dataclasses import dataclass

from tqdm import tqdm

from jetspec_sglang.data.prompts import encode_chat
from jetspec_sglang.data.splits import TRAIN_DATASETS, check_no_eval_overlap, load_prompts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NaturalConfig:
    model: str  # target folder (its tokenizer and chat template)
    out: str  # the .jsonl to write (replaced)
    plan: tuple[tuple[str, int], ...]  # (dataset, count); count 0 = every train record of that dataset
    max_prompt_len: int = 384
    max_response_len: int = 1024  # longer answers are cut (and marked finished: false)
    min_response_len: int = 8
    seed: int = 0


def parse_natural_plan(text: str) -> tuple[tuple[str, int], ...]:
    """'sharegpt:16000,gsm8k:0' -> (('sharegpt', 16000), ('gsm8k', 0)); 0 = all train records."""
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, _, count = item.partition(":")
        if name not in TRAIN_DATASETS or not count.isdigit():
            raise ValueError(f"--plan item {item!r}: use DATASET:COUNT with DATASET in {TRAIN_DATASETS} and COUNT >= 0 "
                             "(0 = every train record), e.g. sharegpt:16000,gsm8k:0,humaneval:0")
        out.append((name, int(count)))
    if len({name for name, _ in out}) != len(out):
        raise ValueError(f"--plan {text!r} names a dataset twice; merge the entries")
    return tuple(out)


def natural_records(tokenizer, cfg: NaturalConfig) -> list[dict]:
    """The records of the plan, each dataset's train prompts shuffled with cfg.seed, filtered by length."""
    rng = random.Random(cfg.seed)
    eos = int(tokenizer.eos_token_id)  # <|im_end|> for prepared models (models.py pins it), as regenerate uses
    out = []
    for dataset, count in cfg.plan:
        records = [r for r in load_prompts(dataset, "train") if r.reference and r.reference.strip()]
        rng.shuffle(records)
        picked = []
        for record in tqdm(records, desc=f"natural {dataset}", unit="seq", leave=False):
            if count and len(picked) == count:
                break
            prompt_ids = encode_chat(tokenizer, [record])[0]
            response_ids = tokenizer(record.reference.strip(), add_special_tokens=False)["input_ids"]
            if len(prompt_ids) > cfg.max_prompt_len or len(response_ids) < cfg.min_response_len:
                continue
            finished = len(response_ids) < cfg.max_response_len
            response_ids = response_ids[:cfg.max_response_len - 1] + [eos] if finished else \
                response_ids[:cfg.max_response_len]
            picked.append(record)
            out.append({"key": f"{record.id}@natural", "id": record.id, "dataset": dataset, "split": "train",
                        "temperature": None, "source": "natural", "prompt_ids": prompt_ids,
                        "response_ids": response_ids, "finished": finished})
        if count and len(picked) < count:
            logger.warning("natural %s: %d of %d requested records pass the filters", dataset, len(picked), count)
        check_no_eval_overlap([r.text for r in picked], what=f"natural training text ({dataset})")
    return out


def write_natural(cfg: NaturalConfig) -> dict:
    """Write cfg.out atomically; returns counts per dataset (sequences, response tokens)."""
    from transformers import AutoTokenizer

    records = natural_records(AutoTokenizer.from_pretrained(cfg.model), cfg)
    path = pathlib.Path(cfg.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    summary: dict = {}
    for r in records:
        s = summary.setdefault(r["dataset"], {"sequences": 0, "response_tokens": 0})
        s["sequences"] += 1
        s["response_tokens"] += len(r["response_ids"])
    return summary
