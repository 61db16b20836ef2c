"""Target-aligned data on a GPU: the requests of `regenerate` answered by HF `generate` in large static batches.

`regenerate` (decode.py's continuous-refill decoder) is built for a 2-core CPU. On a GPU the same requests go
through `model.generate` in batches of `batch_size` prompts of similar length (left-padded), one temperature per
batch; shard `rank` of `world` takes every world-th batch, so several processes (or GPUs) split one plan. Records
are appended to `out_dir/responses.rank{rank}.jsonl` in the format of regenerate.py, so `online` and `cache` read
them unchanged; a rerun skips keys already written; `deadline_s` stops admitting batches after that much wall time.
The requests themselves come from `prompts_file` (`python -m jetspec_sglang.train prompts`: the train-split plan,
tokenised where the data packages are installed), so the GPU machine needs no dataset package. Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time

import torch
from tqdm import tqdm

from jetspec_sglang.train.regenerate import read_responses

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchedGenerateConfig:
    model: str  # target folder
    prompts_file: str  # JSONL of {"key", "id", "dataset", "temperature", "prompt_ids"} (train split only)
    out_dir: str
    device: str = "cuda"
    batch_size: int = 256
    max_new_tokens: int = 512
    rank: int = 0
    world: int = 1
    deadline_s: float = 0.0  # > 0: admit no new batch after this many seconds
    seed: int = 0


def plan_batches(requests: list[dict], batch_size: int) -> list[list[dict]]:
    """Group by temperature, sort by prompt length, cut into batches; order is deterministic."""
    batches = []
    for temp in sorted({r["temperature"] for r in requests}):
        group = sorted((r for r in requests if r["temperature"] == temp), key=lambda r: (len(r["prompt_ids"]),
                                                                                           r["key"]))
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def _responses(out_BT: torch.Tensor, prompt_width: int, eos: int) -> list[tuple[list[int], bool]]:
    """(response ids up to and including the first eos, finished) per row of generate's output."""
    rows = []
    for row in out_BT[:, prompt_width:].tolist():
        if eos in row:
            rows.append((row[:row.index(eos) + 1], True))
        else:
            rows.append((row, False))
    return rows


@torch.inference_mode()
def generate_batched(cfg: BatchedGenerateConfig) -> pathlib.Path:
    """Append this shard's responses; returns the JSONL path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = pathlib.Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"responses.rank{cfg.rank}.jsonl"
    done = {r["key"] for r in read_responses(path)}
    requests = [json.loads(x) for x in pathlib.Path(cfg.prompts_file).read_text().splitlines() if x.strip()]
    bad = [r["key"] for r in requests if r.get("split", "train") != "train"]
    if bad:
        raise ValueError(f"--prompts {cfg.prompts_file}: {len(bad)} requests are not train-split (e.g. {bad[0]}); "
                         f"build the file with `python -m jetspec_sglang.train prompts`")
    batches = [b for i, b in enumerate(plan_batches(requests, cfg.batch_size)) if i % cfg.world == cfg.rank]
    batches = [[r for r in b if r["key"] not in done] for b in batches]
    batches = [b for b in batches if b]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.bfloat16).to(cfg.device).eval()
    eos = model.config.eos_token_id  # the model's own stop token (a tokenizer's eos can differ across versions)
    eos = int(eos[0] if isinstance(eos, list) else eos)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    t0, tokens = time.time(), 0
    bar = tqdm(batches, desc=f"generate rank {cfg.rank}", unit="batch")
    with open(path, "a") as f:
        for i, batch in enumerate(bar):
            if cfg.deadline_s and time.time() - t0 > cfg.deadline_s:
                logger.info("generate rank %d: deadline reached after %d of %d batches", cfg.rank, i, len(batches))
                break
            width = max(len(r["prompt_ids"]) for r in batch)
            ids_BP = torch.full((len(batch), width), pad, dtype=torch.long)
            mask_BP = torch.zeros(len(batch), width, dtype=torch.long)
            for j, r in enumerate(batch):  # left padding: every prompt ends at column width - 1
                ids_BP[j, width - len(r["prompt_ids"]):] = torch.tensor(r["prompt_ids"])
                mask_BP[j, width - len(r["prompt_ids"]):] = 1
            temp = float(batch[0]["temperature"])
            torch.manual_seed(cfg.seed * 100_003 + cfg.rank * 1_009 + i)
            out_BT = model.generate(input_ids=ids_BP.to(cfg.device), attention_mask=mask_BP.to(cfg.device),
                                    max_new_tokens=cfg.max_new_tokens, do_sample=temp > 0,
                                    temperature=temp if temp > 0 else None, top_p=None, top_k=None,
                                    eos_token_id=eos, pad_token_id=pad)
            for r, (resp, finished) in zip(batch, _responses(out_BT.cpu(), width, eos)):
                f.write(json.dumps({"key": r["key"], "id": r["id"], "dataset": r["dataset"], "split": "train",
                                    "temperature": r["temperature"], "prompt_ids": r["prompt_ids"],
                                    "response_ids": resp, "finished": finished}) + "\n")
                tokens += len(resp)
            f.flush()
            bar.set_postfix(tok_s=f"{tokens / (time.time() - t0):.0f}", refresh=False)
    logger.info("generate rank %d: %d response tokens in %.0f s -> %s", cfg.rank, tokens, time.time() - t0, path)
    return path
