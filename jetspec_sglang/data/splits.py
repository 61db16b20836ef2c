"""The fixed train/eval splits of every dataset; the only door through which training code gets prompts.

| dataset   | records | eval (held out, never trained on)                | train pool (prompts only)              |
|-----------|---------|--------------------------------------------------|----------------------------------------|
| GSM8K     | 1,319   | test-file index 1000..1318: the last 319         | index 0..999: 1,000                    |
| HumanEval | 164     | HumanEval/100..163: the last 64                  | HumanEval/0..99: 100                   |
| MT-Bench  | 80      | all 80 (first turn)                              | none                                   |
| ShareGPT  | 17,671  | sha256(base id) % 100 == 0, base id "QWJhYvA_3"  | the rest: 16,851 prompts (17,255 minus |
|           | (17,395 | -> "QWJhYvA": 143 conversations, 140 prompts     | 404 equal to an eval text, mostly      |
|           | prompts)|                                                  | "continue" / "please continue")        |
| pycode    | 2,906   | none (code from the interpreter's stdlib,        | all (pycode.py; the count is Python    |
|           | (3.11)  | not a benchmark)                                 | 3.11's)                                |

Rules are by file index or by a hash of the id (no random seed), so they never move. Train records whose
normalized text equals any eval text (of any dataset, both MT-Bench turns included) are dropped, and
`check_no_eval_overlap` lets a trainer re-check its final data. Responses are not taken from here for training:
the trainer regenerates them with the target. Imports no sglang.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from typing import Iterable

from jetspec_sglang.data.benchmarks import gsm8k_reference, read_gsm8k, read_humaneval, read_mtbench
from jetspec_sglang.data.benchmarks import read_mtbench_references
from jetspec_sglang.data.prompts import DATASETS, PromptRecord, format_gsm8k, format_humaneval, normalize_text
from jetspec_sglang.data.pycode import read_pycode
from jetspec_sglang.data.sharegpt import load_sharegpt

logger = logging.getLogger(__name__)

SPLITS = ("train", "eval")
GSM8K_EVAL_START = 1000  # GSM8K test-file index >= this is eval
HUMANEVAL_EVAL_START = 100  # HumanEval task number >= this is eval
SHAREGPT_EVAL_BUCKETS = 100  # ShareGPT base ids hashing to bucket 0 of this many are eval
TRAIN_DATASETS = ("sharegpt", "gsm8k", "humaneval", "pycode")  # MT-Bench has no train split
EVAL_DATASETS = ("sharegpt", "gsm8k", "humaneval", "mtbench")  # pycode has no eval split


def sharegpt_bucket(sharegpt_id: str) -> int:
    """Stable bucket of a ShareGPT id; the pieces of one conversation share it ("x_0", "x_11" -> base "x")."""
    base, _, tail = sharegpt_id.rpartition("_")
    base = base if base and tail.isdigit() else sharegpt_id
    return int(hashlib.sha256(base.encode("utf-8")).hexdigest()[:8], 16) % SHAREGPT_EVAL_BUCKETS


def _check(dataset: str, split: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is unknown; choose one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; choose one of {SPLITS}")


def _is_eval(dataset: str, record: PromptRecord) -> bool:
    if dataset == "gsm8k":
        return record.index >= GSM8K_EVAL_START
    if dataset == "humaneval":
        return int(record.id.split("/")[1]) >= HUMANEVAL_EVAL_START
    if dataset == "mtbench":
        return True
    if dataset == "pycode":
        return False
    return sharegpt_bucket(record.id.split("/", 2)[2]) == 0


@functools.lru_cache(maxsize=None)
def _all_records(dataset: str) -> tuple[PromptRecord, ...]:
    """Every prompt of `dataset`, both splits; private so training code cannot skip the split."""
    if dataset == "gsm8k":
        return tuple(PromptRecord("gsm8k", f"gsm8k/{r['index']}", r["index"], r["question"],
                                  format_gsm8k(r["question"]), gsm8k_reference(r["answer"])) for r in read_gsm8k())
    if dataset == "humaneval":
        return tuple(PromptRecord("humaneval", r["task_id"], r["index"], r["prompt"], format_humaneval(r["prompt"]),
                                  f"```python\n{r['prompt']}{r['canonical_solution']}```") for r in read_humaneval())
    if dataset == "pycode":
        return tuple(PromptRecord("pycode", r["id"], r["index"], r["prompt"], format_humaneval(r["prompt"]),
                                  f"```python\n{r['solution']}```") for r in read_pycode())
    if dataset == "mtbench":
        refs = read_mtbench_references()
        return tuple(PromptRecord("mtbench", f"mtbench/{r['question_id']}", r["index"], r["turns"][0], r["turns"][0],
                                  refs.get(r["question_id"])) for r in read_mtbench())
    records = []
    for conv in load_sharegpt():
        messages = conv["messages"]
        first = next((i for i, m in enumerate(messages) if m["role"] == "user" and m["content"].strip()), None)
        if first is None:
            continue  # empty conversations and assistant-only pieces carry no prompt
        reply = next((m["content"] for m in messages[first + 1:] if m["role"] == "assistant"), None)
        text = messages[first]["content"]
        records.append(PromptRecord("sharegpt", f"sharegpt/{conv['index']}/{conv['id']}", conv["index"], text, text,
                                    reply))
    return tuple(records)


def _keys(record: PromptRecord) -> set[str]:
    return {normalize_text(record.source_text), normalize_text(record.text)}


@functools.lru_cache(maxsize=None)
def eval_keys() -> frozenset[str]:
    """Normalized texts of every eval prompt of every dataset (plus MT-Bench second turns)."""
    keys = set()
    for dataset in EVAL_DATASETS:
        for record in _all_records(dataset):
            if _is_eval(dataset, record):
                keys |= _keys(record)
    keys |= {normalize_text(r["turns"][1]) for r in read_mtbench()}
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def _split(dataset: str, split: str) -> tuple[PromptRecord, ...]:
    records = [r for r in _all_records(dataset) if _is_eval(dataset, r) == (split == "eval")]
    if split == "train":
        banned, kept = eval_keys(), []
        for r in records:
            if _keys(r) & banned:
                logger.info("dropping train prompt %s: its text equals an eval prompt", r.id)
            else:
                kept.append(r)
        records = kept
    return tuple(records)


def load_prompts(dataset: str, split: str) -> list[PromptRecord]:
    """The prompts of `dataset` ("sharegpt", "gsm8k", "humaneval", "mtbench", "pycode") in `split` ("train"/"eval").

    Train prompts never equal (after `normalize_text`) any eval prompt of any dataset. MT-Bench train and pycode eval
    are empty.
    ShareGPT prompts are the first user turn of each conversation that has one.
    """
    _check(dataset, split)
    return list(_split(dataset, split))


def training_prompts(datasets: Iterable[str] = TRAIN_DATASETS) -> list[PromptRecord]:
    """The train split of each dataset in `datasets`, concatenated in that order."""
    return [r for d in datasets for r in load_prompts(d, "train")]


def check_no_eval_overlap(texts: Iterable[str], what: str = "training data") -> None:
    """Raise ValueError if any of `texts` equals (after `normalize_text`) an eval prompt."""
    banned = eval_keys()
    hits = [t for t in texts if normalize_text(t) in banned]
    if hits:
        raise ValueError(f"{what} contains {len(hits)} evaluation prompt(s), e.g. {hits[0][:80]!r}; build it "
                         f"from jetspec_sglang.data.splits.load_prompts(dataset, split='train') only")
