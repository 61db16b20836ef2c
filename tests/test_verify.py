"""Tree acceptance (verify.py): greedy equals a plain walk of the target's choices, a width-1 tree is chain
speculative decoding, and sampled acceptance emits exactly the target's distribution (statistical test whose
bound shrinks like 1/sqrt(n)); `target_probs` against a straightforward per-row reference.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tol
from jetspec_sglang.tree import NO_PARENT, build_tree
from jetspec_sglang.verify import PAD_NODE, PAD_TOKEN, AcceptResult, accept_greedy, accept_sampled, target_probs

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- oracles


def walk_oracle(tokens: list, parents: list, choice: list):
    """From the root, move to the first child (lowest index) whose token is the target's choice here; stop when none.

    Returns (path, emitted tokens): the emitted tokens are the accepted draft tokens then the bonus.
    """
    path = [0]
    while True:
        cur = path[-1]
        nxt = [i for i in range(len(tokens)) if parents[i] == cur and tokens[i] == choice[cur]]
        if not nxt:
            return path, [tokens[i] for i in path[1:]] + [choice[cur]]
        path.append(nxt[0])


def assert_result_equals_walk(res: AcceptResult, tokens_BN, parents_BN, choice_BN, max_depth: int):
    B = tokens_BN.shape[0]
    P = max_depth + 1
    assert res.path_BP.shape == res.tokens_BP.shape == (B, P)
    assert res.accept_lens_B.shape == res.bonus_B.shape == (B,)
    assert all(t.dtype == torch.int64 for t in (res.path_BP, res.tokens_BP, res.accept_lens_B, res.bonus_B))
    for b in range(B):
        path, emitted = walk_oracle(tokens_BN[b].tolist(), parents_BN[b].tolist(), choice_BN[b].tolist())
        assert res.path_BP[b].tolist() == path + [PAD_NODE] * (P - len(path)), b
        assert res.tokens_BP[b].tolist() == emitted + [PAD_TOKEN] * (P - len(emitted)), b
        assert int(res.accept_lens_B[b]) == len(path)
        assert int(res.bonus_B[b]) == emitted[-1]


def random_tree(B: int, N: int, V: int, seed: int, pad: int = 0):
    """parents[i] ~ U[0, i); the last `pad` nodes are padding (NO_PARENT, depth 0, the root token)."""
    gen = torch.Generator().manual_seed(seed)
    parents = (torch.rand(B, N, generator=gen) * torch.arange(N)).floor().long()
    parents[:, 0] = NO_PARENT
    tokens = torch.randint(0, V, (B, N), generator=gen)
    if pad:
        parents[:, N - pad:] = NO_PARENT
        tokens[:, N - pad:] = tokens[:, :1]
    depth = torch.zeros(B, N, dtype=torch.int64)
    for i in range(1, N):
        depth[:, i] = torch.where(parents[:, i] >= 0, depth.gather(1, parents[:, i:i + 1].clamp(min=0))[:, 0] + 1, 0)
    return tokens, parents, depth, gen


# ---------------------------------------------------------------- greedy


@settings(max_examples=300, **SETTINGS)
@given(B=st.integers(1, 4), N=st.integers(1, 40), V=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       pad=st.integers(0, 4), extra_depth=st.integers(0, 3))
def test_greedy_equals_walk_of_target_choices(B, N, V, seed, pad, extra_depth):
    """Small vocabularies make duplicate sibling tokens common: the first matching sibling must win."""
    tokens, parents, depth, gen = random_tree(B, N, V, seed, min(pad, N - 1))
    choice = torch.randint(0, V, (B, N), generator=gen)
    max_depth = int(depth.max()) + extra_depth
    res = accept_greedy(tokens, parents, depth, choice, max_depth)
    assert_result_equals_walk(res, tokens, parents, choice, max_depth)


@settings(max_examples=150, **SETTINGS)
@given(B=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), N=st.sampled_from([2, 8, 64]), p_match=st.floats(0, 1))
def test_greedy_on_built_trees(B, seed, N, p_match):
    gen = torch.Generator().manual_seed(seed)
    L, K, V = 6, 3, 12
    tok = torch.rand(B, L, V, generator=gen).argsort(-1)[..., :K]
    lp = -torch.rand(B, L, K, generator=gen).sort(-1).values
    tree = build_tree(tok, lp, torch.randint(0, V, (B,), generator=gen), N)
    # target choice: often the draft's rank-0 token at the next depth, so that long paths get accepted
    rank0 = tok[:, :, 0].gather(1, tree.depth_BN.clamp(max=L - 1))
    choice = torch.where(torch.rand(B, N, generator=gen) < p_match, rank0, torch.randint(0, V, (B, N), generator=gen))
    res = accept_greedy(tree.tokens_BN, tree.parents_BN, tree.depth_BN, choice, L)
    assert_result_equals_walk(res, tree.tokens_BN, tree.parents_BN, choice, L)


def test_int32_inputs_give_int64_results():
    """SGLang's predictions are int32: any mix of int32/int64 tokens and choices gives the same int64 result."""
    tokens, parents, depth, gen = random_tree(3, 20, 3, seed=2)
    choice = torch.randint(0, 3, (3, 20), generator=gen)
    want = accept_greedy(tokens, parents, depth, choice, int(depth.max()))
    for tok_dtype, choice_dtype in [(torch.int32, torch.int32), (torch.int64, torch.int32), (torch.int32, torch.int64)]:
        got = accept_greedy(tokens.to(tok_dtype), parents.to(tok_dtype), depth.to(tok_dtype), choice.to(choice_dtype),
                            int(depth.max()))
        for field in ("path_BP", "tokens_BP", "accept_lens_B", "bonus_B"):
            assert getattr(got, field).dtype == torch.int64 and torch.equal(getattr(got, field), getattr(want, field))


def test_duplicate_siblings_first_match_wins():
    # root 0 has children 1 (tok 5) and 2 (tok 5); only node 2 has a child (4, tok 6); node 3 (tok 7) under 1.
    tokens = torch.tensor([[9, 5, 5, 7, 6]])
    parents = torch.tensor([[-1, 0, 0, 1, 2]])
    depth = torch.tensor([[0, 1, 1, 2, 2]])
    choice = torch.tensor([[5, 1, 6, 0, 0]])  # at node 2 the target would pick 6, but the walk goes through node 1
    res = accept_greedy(tokens, parents, depth, choice, 2)
    assert res.path_BP.tolist() == [[0, 1, PAD_NODE]]
    assert res.tokens_BP.tolist() == [[5, 1, PAD_TOKEN]]
    assert res.accept_lens_B.tolist() == [2] and res.bonus_B.tolist() == [1]


def test_padding_is_never_accepted():
    # padding repeats the root token; the target choosing that token at the root must not walk into padding
    tokens = torch.tensor([[4, 1, 4, 4]])
    parents = torch.tensor([[-1, 0, NO_PARENT, NO_PARENT]])
    depth = torch.tensor([[0, 1, 0, 0]])
    res = accept_greedy(tokens, parents, depth, torch.tensor([[4, 4, 4, 4]]), 3)
    assert res.accept_lens_B.tolist() == [1] and res.bonus_B.tolist() == [4]
    assert res.path_BP.tolist() == [[0, PAD_NODE, PAD_NODE, PAD_NODE]]
    assert res.tokens_BP.tolist() == [[4, PAD_TOKEN, PAD_TOKEN, PAD_TOKEN]]


def chain_spec_decode(draft: list, target: list):
    """Chain speculative decoding: the longest draft prefix equal to the target's choices, then the bonus."""
    k = 0
    while k < len(draft) and draft[k] == target[k]:
        k += 1
    return draft[:k] + [target[k]]


@settings(max_examples=200, **SETTINGS)
@given(B=st.integers(1, 4), L=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), p_match=st.floats(0, 1))
def test_width_one_tree_is_chain_speculative_decoding(B, L, seed, p_match):
    gen = torch.Generator().manual_seed(seed)
    V = 20
    tok = torch.randint(0, V, (B, L, 1), generator=gen)
    lp = -torch.rand(B, L, 1, generator=gen)
    tree = build_tree(tok, lp, torch.randint(0, V, (B,), generator=gen), L + 1)  # K=1: a chain of L drafts
    draft = tok[:, :, 0]
    # the target's choice at node i (depth i) agrees with the draft token at depth i+1 with probability p_match
    agree = torch.rand(B, L + 1, generator=gen) < p_match
    target = torch.where(agree, torch.cat([draft, draft[:, :1]], 1), torch.randint(0, V, (B, L + 1), generator=gen))
    res = accept_greedy(tree.tokens_BN, tree.parents_BN, tree.depth_BN, target, L)
    for b in range(B):
        want = chain_spec_decode(draft[b].tolist(), target[b].tolist())
        assert res.tokens_BP[b].tolist() == want + [PAD_TOKEN] * (L + 1 - len(want))
        assert int(res.accept_lens_B[b]) == len(want)
        assert res.path_BP[b].tolist()[: len(want)] == list(range(len(want)))


def test_full_acceptance_fills_the_path():
    L = 5
    tokens = torch.tensor([[7, 1, 2, 3, 4, 5]])
    parents = torch.tensor([[-1, 0, 1, 2, 3, 4]])
    depth = torch.arange(L + 1)[None]
    res = accept_greedy(tokens, parents, depth, torch.tensor([[1, 2, 3, 4, 5, 9]]), L)
    assert res.path_BP.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert res.tokens_BP.tolist() == [[1, 2, 3, 4, 5, 9]]
    assert res.accept_lens_B.tolist() == [L + 1] and res.bonus_B.tolist() == [9]


# ---------------------------------------------------------------- target_probs


def target_probs_row(logits: torch.Tensor, T: float, k: int, p: float) -> torch.Tensor:
    """softmax(logits / T) (T <= 0 -> 1); keep the k largest (k <= 0 or >= V: all); renormalise; keep the first
    token and then tokens in descending order while the mass before them is < p; renormalise. float64."""
    V = logits.shape[0]
    probs = torch.softmax(logits.double() / (T if T > 0 else 1.0), 0)
    order = sorted(range(V), key=lambda v: -float(probs[v]))
    kept = order[: k if 0 < k < V else V]
    mass = sum(float(probs[v]) for v in kept)
    nucleus, before = [], 0.0
    for v in kept:
        if nucleus and before >= p:  # the most likely token always stays
            break
        nucleus.append(v)
        before += float(probs[v]) / mass
    out = torch.zeros(V, dtype=torch.float64)
    out[nucleus] = probs[nucleus] / probs[nucleus].sum()
    return out


@pytest.mark.parametrize("V", [1, 7, 50])
def test_target_probs_matches_row_reference(V):
    gen = torch.Generator().manual_seed(V)
    B, N = 6, 3
    logits = torch.randn(B, N, V, generator=gen) * 3
    temps = torch.tensor([1.0, 0.5, 2.0, 0.0, 0.7, 1.0])
    top_k = torch.tensor([0, 3, V, 1, V + 5, 2])
    top_p = torch.tensor([1.0, 0.9, 0.5, 0.3, 0.0, 1.0])
    for k_B, p_B in [(None, None), (top_k, None), (None, top_p), (top_k, top_p)]:
        got = target_probs(logits, temps, k_B, p_B)
        assert got.dtype == torch.float32 and got.shape == (B, N, V)
        want = torch.stack([torch.stack([
            target_probs_row(logits[b, n], float(temps[b]), 0 if k_B is None else int(k_B[b]),
                             1.0 if p_B is None else float(p_B[b])) for n in range(N)]) for b in range(B)])
        torch.testing.assert_close(got.double(), want, **tol(torch.float32))
        torch.testing.assert_close(got.sum(-1), torch.ones(B, N), **tol(torch.float32))


def test_target_probs_top_p_zero_keeps_the_most_likely_token():
    logits = torch.tensor([[[0.5, 2.0, -1.0]]])
    probs = target_probs(logits, torch.tensor([1.0]), None, torch.tensor([0.0]))
    assert probs.tolist() == [[[0.0, 1.0, 0.0]]]


# ---------------------------------------------------------------- sampled acceptance


def test_temperature_zero_rows_are_greedy():
    tokens, parents, depth, gen = random_tree(6, 30, 3, seed=4)
    logits = torch.randn(6, 30, 3, generator=gen)
    temps = torch.tensor([0.0, 1.0, 0.0, 0.5, 0.0, 2.0])
    greedy = accept_greedy(tokens, parents, depth, logits.argmax(-1), int(depth.max()))
    for seed in range(3):
        res = accept_sampled(tokens, parents, depth, logits, int(depth.max()), temps,
                             top_k_B=torch.tensor([0, 2, 0, 0, 1, 0]), top_p_B=torch.full((6,), 0.9),
                             generator=torch.Generator().manual_seed(seed))
        for field in ("path_BP", "tokens_BP", "accept_lens_B", "bonus_B"):
            assert torch.equal(getattr(res, field)[::2], getattr(greedy, field)[::2]), field
    same = [accept_sampled(tokens, parents, depth, logits, int(depth.max()), temps,
                           generator=torch.Generator().manual_seed(9)).tokens_BP for _ in range(2)]
    assert torch.equal(*same), "a seeded generator reproduces the draws"


# A toy autoregressive target over V tokens: logits of the next token = TABLE[position of the last token, token].
V_TOY, POS_TOY = 5, 4
TREE_PARENTS = [-1, 0, 0, 0, 1, 1, 2]  # root; three children; two grandchildren under the first, one under the second
TREE_DEPTH = [0, 1, 1, 1, 2, 2, 2]
# Which token each node holds, by the target's rank at its parent. The likely tree leaves the rank-1 token out at
# the root (so the bonus path is exercised) and holds a rank-3 token (impossible under top-k 3); the impossible tree
# holds ranks >= 2 only (probability 0 under top-k 2).
TREE_RANKS = {False: [None, 0, 2, 3, 0, 1, 1], True: [None, 4, 3, 2, 4, 3, 2]}


def toy_table() -> torch.Tensor:
    return torch.randn(POS_TOY, V_TOY, V_TOY, generator=torch.Generator().manual_seed(1234)) * 1.5


def toy_tree(root_B: torch.Tensor, root_pos: int, table, probs_table, impossible: bool):
    """Tree tokens for each row (TREE_RANKS of the target at the parent). Returns tokens, parents, depth and the
    target logits at every node (the toy model at the node's own position and token)."""
    B = root_B.shape[0]
    N = len(TREE_PARENTS)
    order_PVV = probs_table.argsort(dim=-1, descending=True, stable=True)
    tokens = torch.empty(B, N, dtype=torch.int64)
    tokens[:, 0] = root_B
    for i in range(1, N):
        p, d = TREE_PARENTS[i], TREE_DEPTH[i]
        tokens[:, i] = order_PVV[root_pos + d - 1][tokens[:, p], TREE_RANKS[impossible][i]]
    pos_N = root_pos + torch.tensor(TREE_DEPTH)
    logits = table[pos_N[None, :].expand(B, N), tokens]  # [B, N, V]
    parents = torch.tensor(TREE_PARENTS).expand(B, N)
    return tokens, parents, torch.tensor(TREE_DEPTH).expand(B, N), logits


def tv_bound(cells: int, n: int, delta: float = 1e-9) -> float:
    """E[TV] <= 0.5 sqrt(cells / n); TV moves by <= 1/n per sample, so by McDiarmid a false failure needs a
    deviation sqrt(ln(1/delta) / (2n)) with probability <= delta. The bound is c / sqrt(n)."""
    return (0.5 * math.sqrt(cells) + math.sqrt(math.log(1 / delta) / 2)) / math.sqrt(n)


def sample_two_tokens(n, T, top_k, top_p, impossible, seed, wrong_node_logits=False):
    """Run rounds of JetSpec sampled acceptance on n independent copies of one prompt until each has emitted two
    tokens. Returns (first, second, accept_lens of round 1, exact joint [V, V], exact accept-length law)."""
    table = toy_table()
    gen = torch.Generator().manual_seed(seed)
    T_n = torch.full((n,), T)
    k_n = None if top_k is None else torch.full((n,), top_k, dtype=torch.int64)
    p_n = None if top_p is None else torch.full((n,), top_p)

    def probs_fn(logits_XV):  # the target distribution (through the function under test, checked above)
        X = logits_XV.shape[0]
        return target_probs(logits_XV[:, None], torch.full((X,), T), None if top_k is None else
                            torch.full((X,), top_k), None if top_p is None else torch.full((X,), top_p))[:, 0]

    probs_table = probs_fn(table.reshape(-1, V_TOY)).reshape(table.shape)  # [position, last token, next token]

    def one_round(root_B, root_pos):
        tokens, parents, depth, logits = toy_tree(root_B, root_pos, table, probs_table, impossible)
        if wrong_node_logits:  # a deliberately broken verifier: every node sees its parent's logits
            logits = logits[:, [0] + TREE_PARENTS[1:]]
        B = root_B.shape[0]
        return accept_sampled(tokens, parents, depth, logits, 2, T_n[:B], None if k_n is None else k_n[:B],
                              None if p_n is None else p_n[:B], generator=gen)

    r0 = 3
    first_round = one_round(torch.full((n,), r0), 0)
    first, second = first_round.tokens_BP[:, 0], first_round.tokens_BP[:, 1].clone()
    short = first_round.accept_lens_B == 1  # only the bonus was emitted: the second token comes from round 2
    second[short] = one_round(first[short], 1).tokens_BP[:, 0]
    # exact law: p(x1) p(x2 | x1) under the toy model
    p1 = probs_table[0, r0].double()
    p2 = probs_table[1].double()  # [x1, x2]
    joint = p1[:, None] * p2
    # exact accept-length law of round 1: reach(u) = prod of target probs of the path tokens
    tokens, _, _, logits = toy_tree(torch.tensor([r0]), 0, table, probs_table, impossible)
    node_probs = probs_fn(logits[0]).double()  # [N, V]
    reach = [1.0] + [0.0] * (len(TREE_PARENTS) - 1)
    for i in range(1, len(TREE_PARENTS)):
        reach[i] = reach[TREE_PARENTS[i]] * float(node_probs[TREE_PARENTS[i], tokens[0, i]])
    stop = [reach[u] * (1 - sum(float(node_probs[u, tokens[0, c]]) for c in range(len(TREE_PARENTS))
                                if TREE_PARENTS[c] == u)) for u in range(len(TREE_PARENTS))]
    accept_law = torch.zeros(4, dtype=torch.float64)
    for u, s in enumerate(stop):
        accept_law[TREE_DEPTH[u] + 1] += s
    return first, second, first_round.accept_lens_B, joint, accept_law


def empirical(x: torch.Tensor, cells: int) -> torch.Tensor:
    return torch.bincount(x, minlength=cells).double() / x.numel()


SAMPLING_CASES = [  # (temperature, top_k, top_p, impossible tree)
    (1.0, None, None, False),
    (0.6, 3, None, False),
    (1.4, None, 0.8, False),
    (0.8, 4, 0.9, False),
    (1.0, 2, None, True),
    (1.3, 2, 0.95, True),
]


@pytest.mark.parametrize("T,top_k,top_p,impossible", SAMPLING_CASES)
def test_sampled_acceptance_emits_the_target_distribution(T, top_k, top_p, impossible):
    n = 30_000
    first, second, accept_lens, joint, accept_law = sample_two_tokens(n, T, top_k, top_p, impossible, seed=7)
    V = V_TOY
    bound1, bound2 = tv_bound(V, n), tv_bound(V * V, n)
    tv_first = 0.5 * (empirical(first, V) - joint.sum(1)).abs().sum()
    tv_joint = 0.5 * (empirical(first * V + second, V * V) - joint.flatten()).abs().sum()
    assert tv_first < bound1, (float(tv_first), bound1)
    assert tv_joint < bound2, (float(tv_joint), bound2)
    tv_accept = 0.5 * (empirical(accept_lens, 4) - accept_law).abs().sum()
    assert tv_accept < tv_bound(4, n), (float(tv_accept), empirical(accept_lens, 4), accept_law)
    if impossible:
        assert (accept_lens == 1).all(), "tokens of probability 0 are never accepted"
    else:
        assert 0.3 < accept_law[2:].sum() < 0.99 and (accept_lens == 3).any(), "the likely tree is accepted often, not always"


def test_statistical_test_detects_a_biased_verifier():
    """The same bound rejects a plausible bug (each node scored with its parent's logits): the test has power."""
    n = 30_000
    first, second, _, joint, _ = sample_two_tokens(n, 1.0, None, None, False, seed=7, wrong_node_logits=True)
    tv_joint = 0.5 * (empirical(first * V_TOY + second, V_TOY**2) - joint.flatten()).abs().sum()
    assert tv_joint > 3 * tv_bound(V_TOY**2, n), float(tv_joint)
