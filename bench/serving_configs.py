"""The server configurations a serving sweep compares, and the ServerSpec that starts each one.

A configuration is plain decoding, a JETSPEC tree at one fixed budget (JETSPEC_BUDGET=N), the JETSPEC chain (width 1,
budget depth + 1), JETSPEC's automatic budget (JETSPEC_BUDGET=auto, the server default) up to the largest budget, a
JETSPEC budget ladder (JETSPEC_BUDGET_LADDER) or a server the user runs (attached by URL). Imports no sglang;
the ladder syntax and checks are jetspec_sglang.config's, so a bad ladder fails here, before any server starts.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from jetspec_sglang.config import JetSpecConfig, parse_draft_vocab, parse_ladder
from jetspec_sglang.serving import ServerSpec

PLAIN = "plain"
KINDS = ("plain", "tree", "chain", "auto", "ladder", "attached")


@dataclass(frozen=True)
class ServerConfig:
    name: str  # unique in a sweep; the key of every record, table row and plot line
    kind: str  # one of KINDS
    budget: int | None = None  # --speculative-num-draft-tokens (root included); auto's / a ladder's largest
    depth: int | None = None  # --speculative-num-steps
    width: int | None = None  # JETSPEC_TREE_WIDTH
    ladder: str | None = None  # JETSPEC_BUDGET_LADDER text, e.g. '1:16,4:8,16:1'
    url: str | None = None  # attached servers only
    draft_vocab: str | None = None  # JETSPEC_DRAFT_VOCAB (None: the server default, auto)
    packed: str | None = None  # JETSPEC_CPU_PACKED_WEIGHTS (None: the server default, auto = JETSPEC servers only)

    @property
    def speculative(self) -> bool:
        return self.kind in ("tree", "chain", "auto", "ladder")

    def as_dict(self) -> dict:
        return asdict(self)


def head_depth(head: str) -> int | None:
    """The head's default depth (block_size - 1) when `head` is a local folder; None for a hub id."""
    config = Path(head) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    return int(data["block_size"]) - 1


def ladder_config(text: str, depth: int, width: int) -> ServerConfig:
    """'1:16,4:8,16:1' -> a 'ladder-16-8-1' config whose budget is the ladder's first (largest) step."""
    steps = parse_ladder(text)
    if not steps:
        raise ValueError(f"--ladder {text!r} is empty; use e.g. '1:16,4:8,16:1' (max_requests:budget,...)")
    budget = max(b for _, b in steps)  # the first step when the ladder is valid
    JetSpecConfig(budget=max(budget, depth + 1), depth=depth, width=width, budget_ladder=steps)  # raises on error
    name = "ladder-" + "-".join(str(b) for _, b in steps)
    return ServerConfig(name, "ladder", budget=max(budget, depth + 1), depth=depth, width=width,
                        ladder=",".join(f"{m}:{b}" for m, b in steps))


def sweep_configs(budgets, depth: int | None, width: int, chain: bool, ladders, plain: bool = True,
                  auto: bool = True, draft_vocabs=(), plain_packed: bool = False) -> list:
    """Plain first (the reference of every ratio and parity check), then fixed trees, chain, auto and ladders.

    budgets (8, 16), depth 7, width 4, chain, auto, ladder '1:16,16:1' ->
    plain, jetspec-b8, jetspec-b16, chain-l7, auto-b16 (auto up to the largest budget), ladder-16-1.
    draft_vocabs ('full',) adds jetspec-b8-vfull, jetspec-b16-vfull and auto-b16-vfull (JETSPEC_DRAFT_VOCAB=full).
    plain_packed adds plain-packed after plain: plain decoding with JETSPEC_CPU_PACKED_WEIGHTS=on, the bit-identical
    packed CPU weights JETSPEC servers use by default (the like-for-like reference; its ratio to plain is the packing's).
    """
    configs = [ServerConfig(PLAIN, "plain")] if plain else []
    if plain_packed:
        configs.append(ServerConfig(f"{PLAIN}-packed", "plain", packed="on"))
    if (budgets or chain or ladders or auto) and depth is None:
        raise ValueError("the draft depth is unknown: pass --depth (the head is not a local folder)")
    for budget in budgets:
        JetSpecConfig(budget=budget, depth=depth, width=width)  # raises ConfigError naming the field
        if budget < depth + 1:
            raise ValueError(f"--budgets {budget} < depth + 1 = {depth + 1}: JETSPEC refuses N < L + 1; "
                             f"raise the budget or lower --depth")
        configs.append(ServerConfig(f"jetspec-b{budget}", "tree", budget=budget, depth=depth, width=width))
    if chain:
        configs.append(ServerConfig(f"chain-l{depth}", "chain", budget=depth + 1, depth=depth, width=1))
    if auto:
        top = max(list(budgets) + [depth + 1])
        configs.append(ServerConfig(f"auto-b{top}", "auto", budget=top, depth=depth, width=width))
    configs += [ladder_config(text, depth, width) for text in ladders]
    for vocab in draft_vocabs:
        parse_draft_vocab(vocab)  # raises ConfigError naming JETSPEC_DRAFT_VOCAB
        configs += [replace(c, name=f"{c.name}-v{vocab}", draft_vocab=vocab) for c in configs
                    if c.kind in ("tree", "auto") and c.draft_vocab is None]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"two configurations share a name in {names}; drop the duplicate --budgets/--ladder value")
    return configs


def attached_configs(attach: list[str]) -> list[ServerConfig]:
    """['plain=http://127.0.0.1:30000', 'http://127.0.0.1:30001'] -> plain @30000, attached-2 @30001."""
    configs = []
    for i, item in enumerate(attach, start=1):
        name, sep, url = item.partition("=")
        if not sep:
            name, url = f"attached-{i}", item
        if not url.startswith("http://") and not url.startswith("https://"):
            raise ValueError(f"--attach {item!r}: expected [NAME=]http://HOST:PORT")
        configs.append(ServerConfig(name, PLAIN if name == PLAIN else "attached", url=url.rstrip("/")))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"--attach names must be unique, got {names}")
    return configs


def server_spec(config: ServerConfig, model: str, head: str | None, device: str, dtype: str | None,
                max_total_tokens: int, max_running_requests: int | None, extra_args: list[str]) -> ServerSpec:
    """The ServerSpec that starts `config` (never called for attached servers)."""
    if config.kind == "attached":
        raise ValueError(f"{config.name} is attached at {config.url}; it is not started here")
    env = {}
    if config.speculative:
        env["JETSPEC_TREE_WIDTH"] = str(config.width)
    if config.kind in ("tree", "chain"):
        env["JETSPEC_BUDGET"] = str(config.budget)  # fixed: the server default is auto
    elif config.kind == "auto":
        env["JETSPEC_BUDGET"] = "auto"
    if config.kind == "ladder":
        env["JETSPEC_BUDGET_LADDER"] = config.ladder
    if config.draft_vocab is not None:
        env["JETSPEC_DRAFT_VOCAB"] = config.draft_vocab
    if config.packed is not None:
        env["JETSPEC_CPU_PACKED_WEIGHTS"] = config.packed
    return ServerSpec(model=model, head=head if config.speculative else None, budget=config.budget,
                      depth=config.depth, device=device, dtype=dtype, max_total_tokens=max_total_tokens,
                      max_running_requests=max_running_requests, extra_args=list(extra_args), env=env)
