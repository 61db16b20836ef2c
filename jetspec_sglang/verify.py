"""Tree acceptance: greedy and lossless sampled, batched -> AcceptResult. Pure torch.

Words used verbatim across the project:
  draft     the tokens the draft head proposes; here a tree of N nodes whose root is the anchor (the last
            committed token, not yet in the target's KV cache).
  budget    N, tree nodes per request including the root.
  width     K, the per-depth top-k shared by every parent at that depth.
  depth     L, the deepest draft slot (the draft block is L + 1 tokens).
  accepted  draft nodes on the path from the root whose every token equals the target's choice at its parent.
  bonus     the target's choice at the deepest accepted node (the root if none): always emitted, and the next
            round's anchor.
  accept length  accepted + 1: the tokens emitted by one round (tau is its mean).
Follows jetspec-method.md 6 (greedy walk, sample-and-match rule and why it is lossless).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from jetspec_sglang.tree import NO_PARENT

PAD_NODE = -1  # path slots past the accept length
PAD_TOKEN = -1  # emitted-token slots past the accept length


@dataclass(frozen=True)
class AcceptResult:
    path_BP: torch.Tensor  # int64 [B, L+1]; node indices root first (path[0] = 0), PAD_NODE after accept length
    accept_lens_B: torch.Tensor  # int64; accepted + 1 (tokens emitted this round), >= 1
    bonus_B: torch.Tensor  # int64; the bonus token
    tokens_BP: torch.Tensor  # int64 [B, L+1]; accepted draft tokens then the bonus, PAD_TOKEN after


def accept_greedy(
    tokens_BN: torch.Tensor,
    parents_BN: torch.Tensor,
    depth_BN: torch.Tensor,
    target_choice_BN: torch.Tensor,
    max_depth: int,
) -> AcceptResult:
    """Longest root path whose tokens all equal the target's choice at their parent (first matching sibling).

    target_choice_BN: the target's token at every node (argmax for greedy; a sample for `accept_sampled`).
    Integer inputs may be int32 or int64; the result is int64.
    max_depth: the deepest level a tree may have (L); sets the path width L + 1 and the jump rounds.
    Vectorised (jetspec-method.md 6.1), O(B*N) memory: match[i] = tok[i] == choice[parent[i]], and only the
    lowest-index matching child of a parent stays (matching siblings share the token choice[parent]); a prefix-AND
    along ancestors by pointer jumping leaves ok = the accepted path itself (one node per depth, root first).
    """
    B, N = tokens_BN.shape
    device = tokens_BN.device
    P = max_depth + 1
    # int32 inputs (SGLang's predict is int32) would mix dtypes below; the results are int64 either way.
    tokens_BN, target_choice_BN = tokens_BN.long(), target_choice_BN.long()
    parents_BN, depth_BN = parents_BN.long(), depth_BN.long()
    idx_BN = torch.arange(N, device=device).expand(B, N)
    has_parent_BN = parents_BN != NO_PARENT
    parent_BN = torch.where(has_parent_BN, parents_BN, 0)
    match_BN = has_parent_BN & (tokens_BN == target_choice_BN.gather(1, parent_BN))
    # SGLang's walk takes the first matching sibling: per parent, the smallest matching index (scratch slot N).
    first_match_BN = torch.full((B, N + 1), N, dtype=torch.int64, device=device)
    first_match_BN.scatter_reduce_(1, torch.where(match_BN, parent_BN, N), idx_BN, "amin")
    match_BN &= first_match_BN.gather(1, parent_BN) == idx_BN
    match_BN[:, 0] = True  # the root
    jump_BN = torch.where(has_parent_BN, parents_BN, idx_BN)
    ok_BN = match_BN
    for _ in range(math.ceil(math.log2(P))):
        ok_BN = ok_BN & ok_BN.gather(1, jump_BN)
        jump_BN = jump_BN.gather(1, jump_BN)
    # ok nodes: the root and at most one child of each ok node, so slot = depth places the path (P = scratch).
    path_BP = torch.full((B, P + 1), PAD_NODE, dtype=torch.int64, device=device)
    path_BP = path_BP.scatter_(1, torch.where(ok_BN, depth_BN, P), idx_BN)[:, :P]
    accepted_B = ok_BN.sum(1) - 1
    best_B = path_BP.gather(1, accepted_B[:, None])[:, 0]
    bonus_B = target_choice_BN.gather(1, best_B[:, None])[:, 0]
    tok_BP = torch.where(path_BP != PAD_NODE, tokens_BN.gather(1, path_BP.clamp(min=0)), PAD_TOKEN)
    # emitted = path tokens without the root, then the bonus at slot `accepted`.
    emitted_BP = torch.cat([tok_BP[:, 1:], torch.full_like(tok_BP[:, :1], PAD_TOKEN)], 1)
    emitted_BP.scatter_(1, accepted_B[:, None], bonus_B[:, None])
    return AcceptResult(path_BP=path_BP, accept_lens_B=accepted_B + 1, bonus_B=bonus_B, tokens_BP=emitted_BP)


def accept_sampled(
    tokens_BN: torch.Tensor,
    parents_BN: torch.Tensor,
    depth_BN: torch.Tensor,
    target_logits_BNV: torch.Tensor,
    max_depth: int,
    temperature_B: torch.Tensor,
    top_k_B: torch.Tensor | None = None,
    top_p_B: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AcceptResult:
    """Lossless sampled acceptance for a deterministic draft tree (sample-and-match, jetspec-method.md 6.3).

    Draw x_i ~ p_target(. | path to i) independently at every node (temperature, top-k, top-p applied to the
    target distribution), then walk from the root along children whose token equals x at their parent; emit x
    at the stop node as the bonus. Each emitted token is an exact sample of the target given the emitted prefix,
    because the tree does not depend on the draws and draws off the walked path are discarded.
    Requests with temperature 0 take the argmax (greedy). top_k_B int64 (0 or >= V = off), top_p_B float (1 = off).
    """
    probs_BNV = target_probs(target_logits_BNV, temperature_B, top_k_B, top_p_B)
    B, N, V = probs_BNV.shape
    sample_BN = torch.multinomial(probs_BNV.reshape(B * N, V), 1, generator=generator).reshape(B, N)
    greedy_B1 = (temperature_B <= 0)[:, None]
    choice_BN = torch.where(greedy_B1, target_logits_BNV.argmax(-1), sample_BN)
    return accept_greedy(tokens_BN, parents_BN, depth_BN, choice_BN, max_depth)


def target_probs(
    logits_BNV: torch.Tensor,
    temperature_B: torch.Tensor,
    top_k_B: torch.Tensor | None = None,
    top_p_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """The distribution each emitted token must follow: softmax(logits / T) restricted to the top-k, then to the
    smallest top-p set (the token crossing p is kept), renormalised. float32 [B, N, V]. T <= 0 rows are treated
    as T = 1 here (the caller takes the argmax for them).
    """
    B, N, V = logits_BNV.shape
    temp_B = torch.where(temperature_B > 0, temperature_B, torch.ones_like(temperature_B)).float()
    probs = torch.softmax(logits_BNV.float() / temp_B[:, None, None], dim=-1)
    if top_k_B is None and top_p_B is None:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if top_k_B is not None:
        k_B = torch.where((top_k_B <= 0) | (top_k_B >= V), V, top_k_B).to(torch.int64)
        keep &= torch.arange(V, device=probs.device) < k_B[:, None, None]
    sorted_p = sorted_p * keep
    if top_p_B is not None:
        sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
        before = torch.cumsum(sorted_p, -1) - sorted_p  # mass strictly before each token
        # the most likely token always stays (top_p <= 0 would otherwise keep nothing: NaN probabilities)
        keep &= (before < top_p_B.float()[:, None, None]) | (torch.arange(V, device=probs.device) == 0)
        sorted_p = sorted_p * keep
    sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)
