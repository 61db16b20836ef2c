"""The online trainer: distil a head against the live frozen target, on CPU, one GPU or many (torchrun).

`python -m jetspec_sglang.train online --data responses.jsonl[,more.jsonl] --out RUN --device cuda` reads the
regenerated sequences, keeps the ones whose key hashes into the held-out bucket for evaluation (cache.is_held_out),
and each step runs `online_step` on `seqs_per_step` sequences per rank. Schedule: linear warm-up, then cosine to
min_lr_ratio x lr over progress = max(step / steps, elapsed / time_budget_s) (time_budget_s = 0: steps only), so a
run on a lent GPU ends on time with a decayed learning rate. Run directory: config.json, metrics.jsonl (training
window + held-out scores every eval_every steps), curve.png, ckpt/state.pt (full state: --resume) and head/ (the
official layout + training_state.json + metrics.jsonl: --init-from continues a run from a committed head on a
fresh clone, with a fresh optimizer and a short warm-up). Multi-GPU: torchrun sets WORLD_SIZE; gradients are
averaged by DDP, each rank reads its own slice of the stream. Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import random
import shutil
import time

import torch
from tqdm import tqdm

from jetspec_sglang.draft_head import DraftHead, init_draft_head, load_draft_head
from jetspec_sglang.draft_head_config import make_draft_head_config
from jetspec_sglang.taps import decoder_layers
from jetspec_sglang.train.cache import is_held_out
from jetspec_sglang.train.curves import plot_curves
from jetspec_sglang.train.heldout import evaluate_heldout
from jetspec_sglang.train.init_head import copy_target_layers, grow_head
from jetspec_sglang.train.loop import METRICS_FILE, STATE_FILE, append_metrics, export_head, portable_config, \
    read_training_state, save_head_state, truncate_metrics
from jetspec_sglang.train.loss import depth_weights
from jetspec_sglang.train.online_step import HeadBlocks, online_step
from jetspec_sglang.train.recipe import HeadRecipe, scheduled_lr
from jetspec_sglang.train.regenerate import read_responses
from jetspec_sglang.train.signals import pad_sequences, target_forward

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OnlineConfig(HeadRecipe):
    data: tuple[str, ...]  # responses.jsonl files (regenerate / generate_batched)
    out_dir: str
    model: str  # target folder
    device: str = "cpu"  # "cpu" | "cuda" (torchrun: cuda:LOCAL_RANK)
    target_layer_ids: tuple[int, ...] = (1, 10, 18, 27)
    time_budget_s: float = 0.0  # > 0: also end (with a decayed lr) when this much wall time has passed
    seqs_per_step: int = 8  # per rank
    max_seq_len: int = 1024
    data_fraction: float = 1.0  # train on this leading fraction of the (shuffled) train sequences
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    held_out_percent: int = 3
    eval_sequences: int = 32
    eval_every: int = 200
    log_every: int = 20
    ckpt_every: int = 500
    threads: int = 0  # CPU torch threads; 0 = torch's default

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("--data: give at least one responses.jsonl (from `train regenerate` or `train generate`)")
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"--data-fraction {self.data_fraction}: must be in (0, 1]")


def learning_rate(cfg: OnlineConfig, step: int, progress: float) -> float:
    """The recipe's schedule (recipe.scheduled_lr) over progress = max(step / steps, elapsed / time budget)."""
    return scheduled_lr(cfg, step, progress)


def split_records(cfg: OnlineConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out greedy) records; train shuffled with cfg.seed and cut to data_fraction."""
    records = [r for path in cfg.data for r in read_responses(path)]
    if not records:
        raise FileNotFoundError(f"--data {list(cfg.data)}: no records; run `python -m jetspec_sglang.train "
                                f"regenerate` (CPU) or `generate` (GPU) first")
    records = [r for r in records if len(r["response_ids"]) >= 2 and len(r["prompt_ids"]) + 2 <= cfg.max_seq_len]
    held = [r for r in records if is_held_out(r["key"], cfg.held_out_percent)]
    train = [r for r in records if not is_held_out(r["key"], cfg.held_out_percent)]
    random.Random(cfg.seed).shuffle(train)
    train = train[:max(1, int(len(train) * cfg.data_fraction))]
    greedy = [r for r in held if r.get("temperature", 0) == 0][:cfg.eval_sequences]
    return train, greedy


def load_target(model_path: str, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).to(device).eval()
    model.requires_grad_(False)
    return model


def build_head(cfg: OnlineConfig, target, sample: list[dict], device: torch.device) -> tuple[DraftHead, dict]:
    """(head in fp32 on device, prior training state {} or the init_from head's training_state.json)."""
    if cfg.init_from:
        head = load_draft_head(cfg.init_from, target_config=target.config, dtype=torch.float32)
        head = grow_head(head, cfg.grow_layers, causal=cfg.head_type == "causal")
        return head.to(device), read_training_state(cfg.init_from)
    head_cfg = make_draft_head_config(
        target.config, mask_token_id=cfg.mask_token_id, num_layers=cfg.num_layers, block_size=cfg.block_size,
        causal_head=cfg.head_type == "causal", target_layer_ids=list(cfg.target_layer_ids),
        intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
    head = init_draft_head(head_cfg, seed=cfg.seed).to(device)
    if cfg.init == "target-layers":
        batch = pad_sequences(sample, cfg.max_seq_len, device)
        taps_BSF, _ = target_forward(target, head_cfg.target_layer_ids, batch.tokens_BS)
        taps_TF = torch.cat([taps_BSF[i, 1:int(n)] for i, n in enumerate(batch.lengths_B)]).float().cpu()
        src = copy_target_layers(head.cpu(), decoder_layers(target).cpu(), target.model.norm.weight.cpu(), taps_TF)
        target.to(device)
        head.to(device)
        logger.info("head initialised from target layers %s", src)
    return head, {}


class _Stream:
    """Per-rank endless stream of train records: epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, records: list[dict], seed: int, rank: int, world: int) -> None:
        self.records, self.seed, self.rank, self.world = records, seed, rank, world

    def batch(self, step: int, per: int) -> list[dict]:
        n, out = len(self.records), []
        for j in range((step * self.world + self.rank) * per, (step * self.world + self.rank + 1) * per):
            epoch, pos = divmod(j, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            out.append(self.records[int(perm[pos])])
        return out


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def train_online(cfg: OnlineConfig, resume: bool = False) -> pathlib.Path:
    """Train (or resume) a head online; returns the run directory (final head in out_dir/head)."""
    rank, world, local = _dist_env()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device; use --device cpu or a CUDA build of torch")
    device = torch.device(f"cuda:{local}" if cfg.device == "cuda" else "cpu")
    if cfg.device == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    elif cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world > 1:
        torch.distributed.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    out = pathlib.Path(cfg.out_dir)
    state_path, metrics_path = out / STATE_FILE, out / METRICS_FILE
    if state_path.exists() and not resume:
        raise FileExistsError(f"--out {out} already holds a run ({state_path}); pass --resume or another --out")
    train, heldout = split_records(cfg)
    target = load_target(cfg.model, device)
    head, prior = build_head(cfg, target, train[:8], device)
    layer_ids = list(head.config.target_layer_ids)
    runner = HeadBlocks(head)
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(runner, device_ids=[local] if cfg.device == "cuda" else None)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start, elapsed0 = int(prior.get("step", 0)), float(prior.get("elapsed_s", 0.0))
    seen0 = int(prior.get("supervised_positions", 0))
    schedule_start = start  # a continued run (--init-from) warms up again and decays over its own cfg.steps
    if prior and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        src = pathlib.Path(cfg.init_from) / METRICS_FILE
        if src.exists() and not metrics_path.exists():
            shutil.copy(src, metrics_path)
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location=device)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optim"])
        start, elapsed0, seen0 = state["step"], state["elapsed_s"], state["supervised_positions"]
        schedule_start = state["schedule_start"]
        truncate_metrics(metrics_path, start)
        logger.info("resumed %s at step %d", out, start)
    end_step = schedule_start + cfg.steps
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
        logger.info("online: %d train / %d held-out sequences, %d ranks, head %d params, steps %d..%d",
                    len(train), len(heldout), world, sum(p.numel() for p in head.parameters()), start, end_step)
    stream = _Stream(train, cfg.seed, rank, world)
    weights_L = depth_weights(cfg.block_size - 1, cfg.depth_decay)
    eval_batch = pad_sequences(heldout, cfg.max_seq_len, device) if heldout and rank == 0 else None
    window = _Window(cfg.block_size - 1, device)
    seen, t_run, step = seen0, time.time(), start
    bar = tqdm(total=end_step, initial=start, desc=f"online {cfg.head_type}", unit="step", disable=rank != 0)
    while step < end_step:
        elapsed = time.time() - t_run
        progress = max((step - schedule_start) / cfg.steps, elapsed / cfg.time_budget_s if cfg.time_budget_s else 0.0)
        if _all_done(progress >= 1.0, world, device):
            break
        lr = learning_rate(cfg, step - schedule_start, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = pad_sequences(stream.batch(step, cfg.seqs_per_step), cfg.max_seq_len, device)
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        res = online_step(runner, target, layer_ids, batch, cfg.anchors_per_seq, weights_L, gen,
                          hard_mix=cfg.hard_mix)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        window.add(res, gnorm)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == end_step:
            positions = window.positions() * world
            seen += positions
            rec = window.flush(step, lr, elapsed0 + time.time() - t_run, seen)
            if rank == 0:
                if eval_batch is not None and (step % cfg.eval_every == 0):
                    rec["heldout"] = _evaluate(head, target, layer_ids, eval_batch)
                append_metrics(metrics_path, rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", agree1=f"{rec['agree'][0]:.2f}", refresh=False)
        if rank == 0 and step % cfg.ckpt_every == 0:
            _save_state(state_path, step, head, opt, cfg, elapsed0 + time.time() - t_run, seen, schedule_start)
            _export(head, out, cfg, step, elapsed0 + time.time() - t_run, seen, len(train), {"step": step})
    bar.close()
    if rank == 0:
        if window.steps:
            seen += window.positions() * world
            append_metrics(metrics_path, window.flush(step, lr, elapsed0 + time.time() - t_run, seen))
        final = {"step": step, "supervised_positions": seen}
        if eval_batch is not None:
            final["heldout"] = _evaluate(head, target, layer_ids, eval_batch)
        append_metrics(metrics_path, final)
        _save_state(state_path, step, head, opt, cfg, elapsed0 + time.time() - t_run, seen, schedule_start)
        state = _export(head, out, cfg, step, elapsed0 + time.time() - t_run, seen, len(train), final)
        plot_curves(metrics_path, out / "curve.png", title=f"{cfg.head_type} head (online)")
        logger.info("online: %d steps, %.0f s, %d supervised positions; head in %s; held-out %s", step,
                    state["elapsed_s"], seen, out / "head", final.get("heldout"))
    if world > 1:
        torch.distributed.destroy_process_group()
    return out


def _export(head: DraftHead, out: pathlib.Path, cfg: OnlineConfig, step: int, elapsed: float, seen: int,
            num_train: int, final: dict) -> dict:
    """out/head: the official layout (bf16) + training_state.json + metrics.jsonl (what --init-from continues)."""
    export_head(head, out / "head")
    state = {"step": step, "elapsed_s": round(elapsed, 1), "supervised_positions": seen, "train_sequences": num_train,
             "config": portable_config(cfg), "final": final}
    return save_head_state(out, state)


def _all_done(done: bool, world: int, device: torch.device) -> bool:
    """Every rank stops at the same step (the time budget is read per rank; a lone rank would hang DDP)."""
    if world == 1:
        return done
    flag = torch.tensor([float(done)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _evaluate(head, target, layer_ids, batch) -> dict:
    head.eval()
    try:
        return evaluate_heldout(head, target, layer_ids, batch)
    finally:
        head.train()


def _save_state(path: pathlib.Path, step: int, head: DraftHead, opt, cfg: OnlineConfig, elapsed: float,
                seen: int, schedule_start: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "head": head.state_dict(), "optim": opt.state_dict(), "config": dataclasses.asdict(cfg),
                "elapsed_s": elapsed, "supervised_positions": seen, "schedule_start": schedule_start}, tmp)
    os.replace(tmp, path)


class _Window:
    """Running sums between two metric lines (kept on the device: one host sync per logged line)."""

    def __init__(self, depth: int, device: torch.device) -> None:
        self.depth, self.device = depth, device
        self.reset()

    def reset(self) -> None:
        z = lambda: torch.zeros(self.depth, device=self.device)  # noqa: E731
        self.loss, self.gnorm, self.steps = torch.zeros((), device=self.device), torch.zeros((), device=self.device), 0
        self.kl_L, self.agree_L, self.count_L, self.t0 = z(), z(), z(), time.time()

    def add(self, res, gnorm) -> None:
        self.loss += res.loss.detach()
        self.gnorm += gnorm.detach().float()
        self.steps += 1
        self.kl_L += res.kl_sum_L
        self.agree_L += res.agree_sum_L
        self.count_L += res.count_L

    def positions(self) -> int:
        return int(self.count_L.sum())

    def flush(self, step: int, lr: float, elapsed: float, seen: int) -> dict:
        dt = max(time.time() - self.t0, 1e-9)
        count = self.count_L.clamp_min(1)
        rec = dict(step=step, loss=float(self.loss) / self.steps, lr=lr, grad_norm=float(self.gnorm) / self.steps,
                   kl=[round(x, 4) for x in (self.kl_L / count).tolist()],
                   agree=[round(x, 4) for x in (self.agree_L / count).tolist()],
                   tokens_per_s=float(self.count_L.sum()) / dt, steps_per_s=self.steps / dt,
                   elapsed_s=round(elapsed, 1), supervised_positions=seen)
        self.reset()
        return rec
