"""The training cache: target taps and teacher distributions of the regenerated sequences, computed once.

Layout of a cache directory (all arrays are .npy, memory-mapped when read):
  tokens.npy        int32  [T]        every sequence's prompt + response ids, concatenated
  taps.npy          uint16 [T, F]     bf16 bits of the tapped target-layer outputs (F = len(layer_ids) * M)
  teacher_logp.npy  fp32   [R, K]     top-K log-probs of the target's next-token distribution
  teacher_ids.npy   int32  [R, K]     their token ids
  teacher_rest.npy  fp32   [R]        log of the mass outside the top K (-inf when none)
  index.json        meta (model, layer_ids, top_k, ...) + one row per sequence (see `SequenceRow`)
Teacher rows exist for response positions only: row `teacher_start + j` is the distribution at sequence position
`resp_start + j` (it predicts token resp_start + j + 1), j in [0, resp_len). Why top-K + rest and not full logits:
full fp16 logits are 98 KB per token (tens of GB here); K = 32 keeps >= 0.99 of the mass at most positions of a
135M chat model, and the rest bucket makes the stored distribution a proper coarsening of p, so the loss is the
exact KL between coarsened p and coarsened q (0 iff q matches p on the top-K and on the rest mass), see loss.py.
bf16 taps: the target runs in bf16 at serving time too. jetspec-method.md 8. Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import time

import numpy as np
import torch
from tqdm import tqdm

from jetspec_sglang.taps import forward_with_taps
from jetspec_sglang.train.regenerate import read_responses

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
ARRAYS = ("tokens", "taps", "teacher_logp", "teacher_ids", "teacher_rest")
HELD_OUT_BUCKETS = 100  # sequences whose key hashes to bucket < held_out_percent are never trained on


@dataclasses.dataclass(frozen=True)
class SequenceRow:
    key: str  # request key from responses.jsonl
    dataset: str
    token_start: int  # first row in tokens/taps
    length: int  # S: prompt + response tokens
    resp_start: int  # P: index (inside the sequence) of the first response token
    teacher_start: int  # first row in teacher_* (position resp_start)
    held_out: bool  # True: evaluation slice, never sampled for training


def is_held_out(key: str, percent: int) -> bool:
    """Stable held-out choice by a hash of the request key (no RNG): 'gsm8k/3@t0', 3 -> bucket < 3."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % HELD_OUT_BUCKETS < percent


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    model: str  # target folder
    responses: str  # responses.jsonl from `regenerate`
    out_dir: str
    layer_ids: tuple[int, ...]  # tapped target layers, in concat order
    top_k: int = 32
    held_out_percent: int = 3
    threads: int = 1


def _plan_rows(records: list[dict], held_out_percent: int) -> list[SequenceRow]:
    rows, tok, teach = [], 0, 0
    for r in records:
        p, n = len(r["prompt_ids"]), len(r["response_ids"])
        rows.append(SequenceRow(r["key"], r["dataset"], tok, p + n, p, teach, is_held_out(r["key"], held_out_percent)))
        tok, teach = tok + p + n, teach + n
    return rows


def teacher_topk(logits_RV: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp_RK, ids_RK int32, rest_R) from logits: the top-K log-probs and log(1 - their mass), in fp32 (fp64 for
    fp64 logits). rest is a logsumexp over the non-top-K logits (no cancellation when the top-K hold ~all mass).
    """
    logp_RV = torch.log_softmax(logits_RV.to(torch.promote_types(logits_RV.dtype, torch.float32)), dim=-1)
    k = min(top_k, logp_RV.shape[-1])
    logp_RK, ids_RK = logp_RV.topk(k, dim=-1)
    rest_R = logp_RV.scatter(-1, ids_RK, float("-inf")).logsumexp(-1) if k < logp_RV.shape[-1] else \
        torch.full(logp_RV.shape[:1], float("-inf"), dtype=logp_RV.dtype)
    return logp_RK, ids_RK.to(torch.int32), rest_R


def build_cache(cfg: CacheConfig) -> pathlib.Path:
    """Run the target once over every regenerated sequence; resumable (progress.json counts finished sequences)."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(cfg.threads)
    out = pathlib.Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = read_responses(cfg.responses)
    if not records:
        raise ValueError(f"--responses {cfg.responses} holds no records; run `python -m jetspec_sglang.train "
                         f"regenerate` first")
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.bfloat16).eval()
    hidden = int(model.config.hidden_size)
    rows = _plan_rows(records, cfg.held_out_percent)
    meta = dict(model=str(cfg.model), responses=str(cfg.responses), layer_ids=list(cfg.layer_ids), top_k=cfg.top_k,
                hidden_size=hidden, vocab_size=int(model.config.vocab_size),
                num_target_layers=int(model.config.num_hidden_layers), held_out_percent=cfg.held_out_percent,
                num_sequences=len(rows), num_tokens=rows[-1].token_start + rows[-1].length,
                num_teacher_rows=rows[-1].teacher_start + rows[-1].length - rows[-1].resp_start)
    index_path = out / INDEX_FILE
    if index_path.exists():
        old = json.loads(index_path.read_text())["meta"]
        if old != meta:
            raise ValueError(f"{index_path} was built with other settings or data ({old}); use a new --out")
    index_path.write_text(json.dumps({"meta": meta, "sequences": [dataclasses.asdict(r) for r in rows]}) + "\n")
    t, r, f, k = meta["num_tokens"], meta["num_teacher_rows"], len(cfg.layer_ids) * hidden, cfg.top_k
    shapes = dict(tokens=((t,), np.int32), taps=((t, f), np.uint16), teacher_logp=((r, k), np.float32),
                  teacher_ids=((r, k), np.int32), teacher_rest=((r,), np.float32))
    progress_path = out / PROGRESS_FILE
    done = json.loads(progress_path.read_text())["done"] if progress_path.exists() else 0
    arrays = {name: np.lib.format.open_memmap(out / f"{name}.npy", mode="r+" if done else "w+", dtype=dt,
                                              shape=shape) for name, (shape, dt) in shapes.items()}
    lm_head = model.get_output_embeddings()
    t0, seen = time.time(), 0
    bar = tqdm(total=meta["num_tokens"], initial=rows[done].token_start if done < len(rows) else t, unit="tok",
               desc="cache", smoothing=0.05)
    for i in range(done, len(rows)):
        row, rec = rows[i], records[i]
        ids_1S = torch.tensor([rec["prompt_ids"] + rec["response_ids"]], dtype=torch.long)
        with torch.inference_mode():
            # last_hidden_state is final-normed; the lm_head runs in fp32, on response positions only
            out_, taps_1SF = forward_with_taps(model.model, cfg.layer_ids, ids_1S)
            final_RM = out_.last_hidden_state[0, row.resp_start:]
            logits_RV = torch.nn.functional.linear(final_RM.float(), lm_head.weight.float())
            logp, tid, rest = teacher_topk(logits_RV, k)  # fp32
        a, b = row.token_start, row.token_start + row.length
        arrays["tokens"][a:b] = ids_1S[0].numpy()
        arrays["taps"][a:b] = taps_1SF[0].contiguous().view(torch.uint16).numpy()
        c, d = row.teacher_start, row.teacher_start + row.length - row.resp_start
        arrays["teacher_logp"][c:d], arrays["teacher_ids"][c:d], arrays["teacher_rest"][c:d] = \
            logp.numpy(), tid.numpy(), rest.numpy()
        seen += row.length
        bar.update(row.length)
        if (i + 1) % 200 == 0 or i + 1 == len(rows):
            for arr in arrays.values():
                arr.flush()
            progress_path.write_text(json.dumps({"done": i + 1}) + "\n")
            bar.set_postfix(tok_s=f"{seen / (time.time() - t0):.0f}", refresh=False)
    bar.close()
    logger.info("cache: %d sequences, %d tokens, %.2f GB in %s", len(rows), meta["num_tokens"],
                sum((out / f"{n}.npy").stat().st_size for n in ARRAYS) / 1e9, out)
    return out


class CacheReader:
    """Memory-mapped view of a cache directory; `sequence(i)` returns torch tensors of one sequence."""

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        index_path, progress_path = self.path / INDEX_FILE, self.path / PROGRESS_FILE
        if not index_path.exists():
            raise FileNotFoundError(f"--cache {self.path}: no {INDEX_FILE}; build it with `python -m "
                                    f"jetspec_sglang.train cache`")
        index = json.loads(index_path.read_text())
        self.meta = index["meta"]
        self.rows = [SequenceRow(**r) for r in index["sequences"]]
        done = json.loads(progress_path.read_text())["done"] if progress_path.exists() else 0
        if done != len(self.rows):
            raise ValueError(f"--cache {self.path} is incomplete ({done}/{len(self.rows)} sequences); rerun the "
                             f"`cache` step with the same arguments to finish it")
        self.arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}

    @property
    def layer_ids(self) -> list[int]:
        return list(self.meta["layer_ids"])

    def train_indices(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if not r.held_out and r.length - r.resp_start >= 2]

    def held_out_indices(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r.held_out and r.length - r.resp_start >= 2]

    def sequence(self, i: int) -> dict:
        """{"tokens_S" int64, "taps_SF" bf16, "teacher_logp_RK" fp32, "teacher_ids_RK" int64, "teacher_rest_R"
        fp32, "resp_start" int}; teacher row j is position resp_start + j (R = S - resp_start)."""
        row = self.rows[i]
        a, b = row.token_start, row.token_start + row.length
        c, d = row.teacher_start, row.teacher_start + row.length - row.resp_start
        return dict(
            tokens_S=torch.from_numpy(np.asarray(self.arrays["tokens"][a:b], dtype=np.int64)),
            taps_SF=torch.from_numpy(np.array(self.arrays["taps"][a:b])).view(torch.bfloat16),
            teacher_logp_RK=torch.from_numpy(np.array(self.arrays["teacher_logp"][c:d])),
            teacher_ids_RK=torch.from_numpy(np.asarray(self.arrays["teacher_ids"][c:d], dtype=np.int64)),
            teacher_rest_R=torch.from_numpy(np.array(self.arrays["teacher_rest"][c:d])),
            resp_start=row.resp_start,
        )

    def teacher_mass(self, vocab_size: int) -> np.ndarray:
        """fp64 [V]: teacher probability mass per token id summed over the train sequences' rows (held-out rows are
        not read); its largest entries are the exact set of a sampled-vocabulary fit (loss.SampledVocab)."""
        mass_V = np.zeros(vocab_size, dtype=np.float64)
        for i in self.train_indices():
            row = self.rows[i]
            c, d = row.teacher_start, row.teacher_start + row.length - row.resp_start
            ids = np.asarray(self.arrays["teacher_ids"][c:d]).ravel()
            mass_V += np.bincount(ids, weights=np.exp(np.asarray(self.arrays["teacher_logp"][c:d], np.float64)).ravel(),
                                  minlength=vocab_size)
        return mass_V


class CacheSet:
    """Several caches of the same target and taps read as one (`--cache a,b`): sequence i of the set is sequence
    i - offset of the cache it falls in; train/held-out choices are each cache's own."""

    def __init__(self, readers: list[CacheReader]) -> None:
        first = readers[0]
        for r in readers[1:]:
            for key in ("layer_ids", "hidden_size", "top_k"):
                if r.meta.get(key) != first.meta.get(key):
                    raise ValueError(f"--cache {r.path}: {key} {r.meta.get(key)} differs from {first.path}'s "
                                     f"{first.meta.get(key)}; caches read together need the same target taps")
        self.readers, self.meta = readers, first.meta
        self._where = [(r, j) for r in readers for j in range(len(r.rows))]

    @property
    def layer_ids(self) -> list[int]:
        return self.readers[0].layer_ids

    def _indices(self, name: str) -> list[int]:
        out, base = [], 0
        for r in self.readers:
            out += [base + j for j in getattr(r, name)()]
            base += len(r.rows)
        return out

    def train_indices(self) -> list[int]:
        return self._indices("train_indices")

    def held_out_indices(self) -> list[int]:
        return self._indices("held_out_indices")

    def sequence(self, i: int) -> dict:
        reader, j = self._where[i]
        return reader.sequence(j)

    def teacher_mass(self, vocab_size: int) -> np.ndarray:
        return sum(r.teacher_mass(vocab_size) for r in self.readers)


Cache = CacheReader | CacheSet


def open_cache(spec: str) -> Cache:
    """One cache directory, or several separated by commas (read as one CacheSet)."""
    paths = [x for x in str(spec).split(",") if x]
    if not paths:
        raise ValueError("--cache is empty: pass a cache directory (or several, comma-separated)")
    return CacheReader(paths[0]) if len(paths) == 1 else CacheSet([CacheReader(x) for x in paths])
