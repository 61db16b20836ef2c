"""JetSpecConfig: the knobs of one JetSpec decoder, validated once, and the one reader of JETSPEC_* variables.

Imports nothing from the rest of the package. The SGLang glue maps server flags onto these fields
(`--speculative-num-draft-tokens` -> budget, `--speculative-num-steps` -> depth); what has no SGLang flag is read
from the environment here (a plugin cannot add flags).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

TREE_ALGOS = ("accum_logp", "top2gap", "best_first")
BACKENDS = ("auto", "torch", "triton")
DRAFT_TOPK_DTYPES = ("auto", "model", "bfloat16")  # draft_topk.py: the dtype the draft rows are projected in
DRAFT_VOCAB_WORDS = ("auto", "full")  # draft_vocab.py: the head's default subset / every token (or a size)
# JETSPEC_CPU_PACKED_WEIGHTS (glue/cpu_packed.py): "auto" packs the bf16 linears of JETSPEC servers on CPU; "on"
# packs those of every CPU server in an environment with the plugin (plain ones too: like-for-like benchmarks);
# "off" never packs. A process-level switch, not a decoder knob, so it is not a JetSpecConfig field.
PACKED_WEIGHTS_WORDS = ("auto", "on", "off")
# Largest tree SGLang's tree helpers accept (build_tree_kernel / reconstruct_indices: draft_token_num <= 1024).
MAX_BUDGET = 1024
# A budget ladder is a tuple of (max_running_requests, budget) steps; see `budget_for_batch`.
DEFAULT_LADDER: tuple[tuple[int, int], ...] = ()


class ConfigError(ValueError):
    """A JetSpec setting is invalid; the message names the field, the value and the fix."""


@dataclass(frozen=True)
class JetSpecConfig:
    budget: int = 64  # N: tree nodes per request, root included (SGLang: --speculative-num-draft-tokens)
    depth: int = 15  # L: deepest draft slot; the draft block is L + 1 (SGLang: --speculative-num-steps)
    width: int = 7  # K: per-depth top-k shared by every parent at that depth (JETSPEC_TREE_WIDTH)
    # "best_first" (per-node heap, the default: docs/tree-builders.md), "accum_logp" (the paper's: per-expansion),
    # "top2gap" (accum_logp with per-depth fan-out caps)
    tree_algo: str = "best_first"
    top2gap_beta: float = 2.0  # top2gap: cap_d = max(1, round(K * sigmoid(-beta * (gap_d - gap0))))
    top2gap_gap0: float = 1.0
    backend: str = "auto"  # ops dispatch: "auto" = Triton on CUDA tensors, PyTorch twins elsewhere
    budget_ladder: tuple[tuple[int, int], ...] = DEFAULT_LADDER  # load-adaptive budget; () = auto or fixed
    budget_auto: bool = True  # JETSPEC_BUDGET=auto (default): per-step budget <= `budget` (budget.py); =N: fixed
    budget_explore: float = 0.02  # auto: at most this fraction of decode time re-measures other budgets
    budget_schedule: tuple[int, ...] = ()  # test mode: budgets cycled step by step, overriding every other rule
    draft_topk_dtype: str = "auto"  # CPU draft top-K projection: "auto" (bf16 copy if measured faster), "model", "bfloat16"
    # CPU draft top-K vocabulary (draft_vocab.py): "auto" (the head's draft_vocab.json at its default size, else
    # every token), "full", or a size "16384" (the most frequent tokens of the head's file)
    draft_vocab: str = "auto"

    def __post_init__(self) -> None:
        _check_int("budget", self.budget, 1, MAX_BUDGET, "JETSPEC_BUDGET / --speculative-num-draft-tokens")
        _check_int("depth", self.depth, 1, 64, "JETSPEC_DEPTH / --speculative-num-steps")
        _check_int("width", self.width, 1, 64, "JETSPEC_TREE_WIDTH")
        if self.tree_algo not in TREE_ALGOS:
            raise ConfigError(f"tree_algo={self.tree_algo!r} is not supported; set JETSPEC_TREE_ALGO to one of {TREE_ALGOS}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r} is not supported; set JETSPEC_OPS_BACKEND to one of {BACKENDS}")
        if not (0 <= self.top2gap_beta < float("inf")):
            raise ConfigError(f"top2gap_beta={self.top2gap_beta!r} must be finite and >= 0; "
                              "set JETSPEC_TOP2GAP_BETA to e.g. 2.0")
        if self.top2gap_gap0 != self.top2gap_gap0:  # NaN
            raise ConfigError("top2gap_gap0=nan must be a number; set JETSPEC_TOP2GAP_GAP0 to e.g. 1.0")
        if self.draft_topk_dtype not in DRAFT_TOPK_DTYPES:
            raise ConfigError(f"draft_topk_dtype={self.draft_topk_dtype!r} is not supported; set "
                              f"JETSPEC_DRAFT_TOPK_DTYPE to one of {DRAFT_TOPK_DTYPES}")
        try:
            if not isinstance(self.draft_vocab, str):
                raise ConfigError("not text")
            parse_draft_vocab(self.draft_vocab)
        except ConfigError:
            raise ConfigError(f"draft_vocab={self.draft_vocab!r} is not 'auto', 'full' or a positive size; set "
                              "JETSPEC_DRAFT_VOCAB to e.g. 16384, or 'full'") from None
        _check_ladder(self.budget_ladder, self.budget)
        if not (0.0 <= self.budget_explore <= 1.0):
            raise ConfigError(f"budget_explore={self.budget_explore!r} must be in [0, 1]; set JETSPEC_BUDGET_EXPLORE "
                              "to e.g. 0.02 (0 turns re-measuring off)")
        for step_budget in self.budget_schedule:
            _check_int("budget_schedule budget", step_budget, 1, self.budget,
                       f"JETSPEC_BUDGET_SCHEDULE (comma-separated budgets, each <= budget={self.budget})")

    def replace(self, **changes) -> "JetSpecConfig":
        return dataclasses.replace(self, **changes)

    def budget_for_batch(self, num_requests: int) -> int:
        """Tree budget for a running batch of `num_requests`: the first ladder step whose bound is >= the batch.

        Ladder ((1, 64), (4, 16), (16, 1)) -> batch 1: 64, batch 3: 16, batch 9: 1, batch 40: 1 (last step holds).
        Budget 1 means the root only: plain decoding through the verify path.
        """
        for max_requests, budget in self.budget_ladder:
            if num_requests <= max_requests:
                return budget
        return self.budget_ladder[-1][1] if self.budget_ladder else self.budget


def _check_int(name: str, value, lo: int, hi: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer in [{lo}, {hi}]; fix {where}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]; fix {where}")


def _check_ladder(ladder, budget: int) -> None:
    where = "JETSPEC_BUDGET_LADDER (format 'max_requests:budget,...', e.g. '1:64,4:16,16:1')"
    previous_bound, previous_budget = 0, MAX_BUDGET + 1
    for step in ladder:
        if not (isinstance(step, tuple) and len(step) == 2):
            raise ConfigError(f"budget_ladder step {step!r} is not a (max_requests, budget) pair; fix {where}")
        bound, step_budget = step
        _check_int("budget_ladder max_requests", bound, 1, 1 << 20, where)
        _check_int("budget_ladder budget", step_budget, 1, budget, where + f" (each budget must be <= budget={budget})")
        if bound <= previous_bound or step_budget > previous_budget:
            raise ConfigError(
                f"budget_ladder={ladder!r} must have increasing max_requests and non-increasing budgets; fix {where}"
            )
        previous_bound, previous_budget = bound, step_budget


def parse_ladder(text: str) -> tuple[tuple[int, int], ...]:
    """'1:64,4:16,16:1' -> ((1, 64), (4, 16), (16, 1)); '' -> ()."""
    steps = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            bound, budget = item.split(":")
            steps.append((int(bound), int(budget)))
        except ValueError:
            raise ConfigError(
                f"JETSPEC_BUDGET_LADDER item {item!r} is not 'max_requests:budget'; use e.g. '1:64,4:16,16:1'"
            ) from None
    return tuple(steps)


def parse_schedule(text: str) -> tuple[int, ...]:
    """'16,1,4' -> (16, 1, 4); '' -> ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"JETSPEC_BUDGET_SCHEDULE={text!r} is not a list of budgets; use e.g. '16,1,4,8'") from None


def parse_budget(text: str) -> int | str:
    """'auto' -> 'auto'; '16' -> 16 (a fixed budget)."""
    return AUTO if text.strip().lower() == AUTO else int(text)


def parse_draft_vocab(text: str) -> str:
    """JETSPEC_DRAFT_VOCAB: 'auto', 'full' or a positive size, normalised. ' Full' -> 'full', '16384' -> '16384'."""
    value = str(text).strip().lower()
    if value in DRAFT_VOCAB_WORDS or (value.isdigit() and int(value) > 0):
        return value
    raise ConfigError(f"JETSPEC_DRAFT_VOCAB={text!r} is not 'auto', 'full' or a positive size; use e.g. "
                      "JETSPEC_DRAFT_VOCAB=16384, or 'full' to draft from every token")


def cpu_packed_weights(environ=None) -> str:
    """JETSPEC_CPU_PACKED_WEIGHTS, normalised ('auto' when unset). Raises ConfigError naming the fix."""
    environ = os.environ if environ is None else environ
    raw = environ.get("JETSPEC_CPU_PACKED_WEIGHTS", "")
    value = raw.strip().lower() or "auto"
    if value not in PACKED_WEIGHTS_WORDS:
        raise ConfigError(f"JETSPEC_CPU_PACKED_WEIGHTS={raw!r} is not one of {PACKED_WEIGHTS_WORDS}; unset it (auto: "
                          "JETSPEC servers on CPU) or give 'on' / 'off'")
    return value


AUTO = "auto"
# Environment variable -> (field, parser). Read only by `config_from_env`.
ENV_VARS = {
    "JETSPEC_BUDGET": ("budget", parse_budget),
    "JETSPEC_DEPTH": ("depth", int),
    "JETSPEC_TREE_WIDTH": ("width", int),
    "JETSPEC_TREE_ALGO": ("tree_algo", str),
    "JETSPEC_TOP2GAP_BETA": ("top2gap_beta", float),
    "JETSPEC_TOP2GAP_GAP0": ("top2gap_gap0", float),
    "JETSPEC_OPS_BACKEND": ("backend", str),
    "JETSPEC_BUDGET_LADDER": ("budget_ladder", parse_ladder),
    "JETSPEC_BUDGET_EXPLORE": ("budget_explore", float),
    "JETSPEC_BUDGET_SCHEDULE": ("budget_schedule", parse_schedule),
    "JETSPEC_DRAFT_TOPK_DTYPE": ("draft_topk_dtype", str),
    "JETSPEC_DRAFT_VOCAB": ("draft_vocab", parse_draft_vocab),
}


def config_from_env(environ=None, **explicit) -> JetSpecConfig:
    """Build a JetSpecConfig from JETSPEC_* variables; `explicit` fields (e.g. from server flags) win.

    `explicit` values that are None are ignored, so callers can pass optional flags straight through.
    JETSPEC_BUDGET=auto (or unset) leaves budget_auto True; JETSPEC_BUDGET=N sets budget N and budget_auto False
    (an explicit budget, e.g. --speculative-num-draft-tokens, still wins for the value).
    """
    environ = os.environ if environ is None else environ
    fields = {}
    for var, (field, parse) in ENV_VARS.items():
        raw = environ.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            fields[field] = parse(raw.strip())
        except ConfigError:
            raise
        except ValueError:
            what = "budget ('auto' or an int)" if var == "JETSPEC_BUDGET" else parse.__name__
            example = "auto" if var == "JETSPEC_BUDGET" else repr(getattr(JetSpecConfig, field))
            raise ConfigError(f"{var}={raw!r} is not a valid {what}; unset it or give e.g. {var}={example}") from None
    if fields.get("budget") == AUTO:
        del fields["budget"]
    elif "budget" in fields:
        fields["budget_auto"] = False
    fields.update({k: v for k, v in explicit.items() if v is not None})
    return JetSpecConfig(**fields)
