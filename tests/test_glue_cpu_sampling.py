"""CPU sampled verification stand-ins (glue/cpu_sampling.py, ledger S2).

* top_k_renorm_prob / top_p_renorm_prob keep exactly the tokens SGLang's CPU sampler keeps
  (layers/sampler.py top_k_top_p_min_p_sampling_from_probs_torch: rank mask, top-p over the original cumulative
  mass): the normalised distributions are equal.
* tree_speculative_sampling_target_only is lossless: over many seeded draws on small trees with known target
  probabilities at each node, the first emitted token follows the root's target distribution and the second
  follows the target conditional at the accepted child (TV bound c / sqrt(n)); trees whose children carry most of
  the mass, none of it, and a truncated walk. With a one-hot target its outputs equal verify_tree_greedy_cpu's.
* install() binds the stand-ins into eagle_utils (idempotent) and stops _verify_uses_greedy from forcing greedy
  on CPU.
"""
import math

import pytest
import torch

from jetspec_sglang.glue.cpu_sampling import (install, top_k_renorm_prob, top_p_renorm_prob,
                                              tree_speculative_sampling_target_only)
from jetspec_sglang.mask import build_retrieve_links
from jetspec_sglang.tree import NO_PARENT

TOP_K_ALL = 1 << 30  # SGLang's "no top-k" after SamplingParams normalisation


# ---------------------------------------------------------------- renormalisation vs SGLang's CPU sampler


def sglang_kept_distribution(probs_TV, top_ks_T, top_ps_T):
    """The distribution SGLang's CPU sampler draws from: its filtered weights scattered back, normalised."""
    from sglang.srt.layers.sampler import top_k_top_p_min_p_sampling_from_probs_torch

    T, V = probs_TV.shape
    _, probs_sort, probs_idx, _ = top_k_top_p_min_p_sampling_from_probs_torch(
        probs_TV.clone(), top_ks_T, top_ps_T, torch.zeros(T), False, None, torch.zeros(T, dtype=torch.int64),
        return_filtered_probs=True)
    weights = torch.zeros_like(probs_TV).scatter_(1, probs_idx.long(), probs_sort)
    return weights / weights.sum(-1, keepdim=True)


RENORM_CASES = {  # name -> (top_k per row, top_p per row)
    "top_k_only": ([1, 3, 17, TOP_K_ALL], [1.0] * 4),
    "top_p_only": ([TOP_K_ALL] * 4, [0.1, 0.5, 0.9, 0.99]),
    "both": ([2, 5, 40, 64], [0.3, 0.95, 0.6, 0.2]),
    "identity": ([TOP_K_ALL, 64, 0, -1], [1.0] * 4),  # k >= V and k <= 0 mean no cut in the stand-in
}


@pytest.mark.sglang
@pytest.mark.parametrize("name", list(RENORM_CASES))
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_renorm_keeps_the_tokens_sglang_cpu_sampler_keeps(name, temperature):
    pytest.importorskip("sglang")
    top_ks, top_ps = RENORM_CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    V = 64
    probs = torch.softmax(torch.randn(len(top_ks), V, generator=gen) * 3 / temperature, -1)
    ks = torch.tensor(top_ks, dtype=torch.int32)
    ps = torch.tensor(top_ps, dtype=torch.float32)
    got = top_p_renorm_prob(top_k_renorm_prob(probs, ks), ps)  # eagle_sample's order: top-k, then top-p
    got = got / got.sum(-1, keepdim=True)  # the stand-ins leave rows unnormalised; the tree op normalises
    sglang_ks = torch.where(ks <= 0, TOP_K_ALL, ks)  # SamplingParams maps top_k -1 to TOP_K_ALL
    want = sglang_kept_distribution(probs, sglang_ks, ps)
    assert torch.equal(got > 0, want > 0), "different kept token sets"
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    if name == "top_k_only":  # rows with a real cut keep k tokens (or every token with mass: fp32 underflow)
        nonzero = (probs > 0).sum(-1).tolist()
        assert (got > 0).sum(-1).tolist()[:3] == [min(k, m) for k, m in zip(top_ks[:3], nonzero)]


@pytest.mark.sglang
def test_top_p_counts_the_original_mass_not_the_renormalised_top_k_mass():
    """probs [0.4, 0.3, 0.2, 0.1], top_k 2, top_p 0.5: the mass before token 1 is 0.4 <= 0.5 (kept); over the
    renormalised top-2 it would be 0.57 (dropped). SGLang's CPU sampler keeps it."""
    pytest.importorskip("sglang")
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    ks, ps = torch.tensor([2], dtype=torch.int32), torch.tensor([0.5])
    got = top_p_renorm_prob(top_k_renorm_prob(probs, ks), ps)
    assert (got > 0).tolist() == [[True, True, False, False]]
    assert torch.equal(got > 0, sglang_kept_distribution(probs, ks, ps) > 0)


# ---------------------------------------------------------------- losslessness of the tree sampler


def tv_bound(cells: int, n: int, delta: float = 1e-9) -> float:
    """E[TV] <= 0.5 sqrt(cells / n); plus a McDiarmid margin for failure probability delta: c / sqrt(n)."""
    return (0.5 * math.sqrt(cells) + math.sqrt(math.log(1 / delta) / 2)) / math.sqrt(n)


V_TOY = 6
# parents (NO_PARENT at the root), node tokens (distinct among siblings), target probabilities per node [N, V].
TREES = {
    # Children carry most of the mass, the best child has its own likely children (depth 3).
    "children_most_mass": (
        [NO_PARENT, 0, 0, 0, 1, 1, 4, 2],
        [0, 2, 4, 1, 3, 0, 5, 5],
        [[0.05, 0.15, 0.45, 0.05, 0.25, 0.05],
         [0.10, 0.05, 0.05, 0.50, 0.05, 0.25],
         [0.20, 0.20, 0.20, 0.10, 0.10, 0.20],
         [0.30, 0.10, 0.10, 0.20, 0.20, 0.10],
         [0.05, 0.05, 0.10, 0.10, 0.10, 0.60],
         [0.40, 0.20, 0.10, 0.10, 0.10, 0.10],
         [0.10, 0.30, 0.10, 0.30, 0.10, 0.10],
         [0.05, 0.05, 0.05, 0.05, 0.05, 0.75]]),
    # Children carry none of the target mass: every draw is a bonus token from the full root distribution.
    "children_no_mass": (
        [NO_PARENT, 0, 0, 1],
        [0, 1, 3, 2],
        [[0.30, 0.00, 0.25, 0.00, 0.25, 0.20],
         [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],
         [0.10, 0.10, 0.10, 0.10, 0.30, 0.30],
         [0.50, 0.10, 0.10, 0.10, 0.10, 0.10]]),
    # Mixed: one root child with mass, one without; the massive child's children carry none.
    "mixed": (
        [NO_PARENT, 0, 0, 1, 1],
        [0, 5, 2, 0, 1],
        [[0.10, 0.20, 0.00, 0.30, 0.10, 0.30],
         [0.00, 0.00, 0.40, 0.20, 0.40, 0.00],
         [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],
         [0.30, 0.10, 0.10, 0.10, 0.10, 0.30],
         [0.10, 0.30, 0.10, 0.30, 0.10, 0.10]]),
}


def draw_two_tokens(name: str, n: int, steps: int, seed: int, wrong_child_probs: bool = False):
    """Run the stand-in on n copies of tree `name` with seeded coins. Returns (first, second, accepted drafts,
    node_probs, parents, tokens); second is -1 where only one token was emitted."""
    parents, tokens, node_probs = TREES[name]
    N = len(parents)
    probs_NV = torch.tensor(node_probs, dtype=torch.float32)
    if wrong_child_probs:  # a deliberately broken verifier: every node is scored with the root's distribution
        probs_NV = probs_NV[0].expand(N, V_TOY)
    # contiguous copies: the CUDA kernel (and so its CPU twin) refuses expanded views
    retrieve_index, first_child, next_sibling = build_retrieve_links(torch.tensor([parents]).expand(n, N).contiguous())
    gen = torch.Generator().manual_seed(seed)
    predicts = torch.zeros(n * N, dtype=torch.int32)
    accept_index = torch.full((n, steps), -1, dtype=torch.int32)
    accept_token_num = torch.zeros(n, dtype=torch.int32)
    target_probs = probs_NV.expand(n, N, V_TOY).contiguous()
    tree_speculative_sampling_target_only(
        predicts=predicts, accept_index=accept_index, accept_token_num=accept_token_num,
        candidates=torch.tensor([tokens]).expand(n, N).contiguous(), retrive_index=retrieve_index,
        retrive_next_token=first_child,
        retrive_next_sibling=next_sibling, uniform_samples=torch.rand(n, N, generator=gen),
        uniform_samples_for_final_sampling=torch.rand(n, generator=gen), target_probs=target_probs,
        draft_probs=torch.zeros_like(target_probs))
    emitted = predicts[accept_index.clamp(min=0).long()]  # emitted[b, j] = token after the j-th accepted node
    first = emitted[:, 0].long()
    second = torch.where(accept_token_num >= 1, emitted[:, 1], -1).long()
    return first, second, accept_token_num, torch.tensor(node_probs, dtype=torch.float64), parents, tokens


def empirical(x: torch.Tensor, cells: int) -> torch.Tensor:
    return torch.bincount(x, minlength=cells).double() / max(x.numel(), 1)


@pytest.mark.parametrize("name,steps", [("children_most_mass", 4), ("children_no_mass", 3), ("mixed", 3),
                                        ("children_most_mass", 2)])  # steps 2: the walk is cut after one draft
def test_tree_sampling_emits_the_target_conditionals(name, steps):
    n = 8000
    first, second, accepted, probs_NV, parents, tokens = draw_two_tokens(name, n, steps, seed=11)
    tv_first = 0.5 * (empirical(first, V_TOY) - probs_NV[0]).abs().sum()
    assert tv_first < tv_bound(V_TOY, n), (float(tv_first), empirical(first, V_TOY), probs_NV[0])
    children = [c for c in range(len(parents)) if parents[c] == 0]
    child_of_token = {tokens[c]: c for c in children}
    for token in range(V_TOY):
        drawn = first == token
        if token not in child_of_token:
            assert (accepted[drawn] == 0).all(), "a token that is not a root child can only be the bonus"
            continue
        c = child_of_token[token]
        if probs_NV[0, token] == 0:
            assert not drawn.any(), "a child of target probability 0 is never emitted"
            continue
        assert (accepted[drawn] >= 1).all() and (second[drawn] >= 0).all(), "a drawn child is an accepted draft"
        m = int(drawn.sum())
        tv_second = 0.5 * (empirical(second[drawn], V_TOY) - probs_NV[c]).abs().sum()
        assert tv_second < tv_bound(V_TOY, m), (token, m, float(tv_second), empirical(second[drawn], V_TOY))
    assert int(accepted.max()) <= steps - 1
    if name == "children_no_mass":
        assert (accepted == 0).all()
    if name == "children_most_mass" and steps == 4:
        assert (accepted == 3).any() and (accepted == 0).any(), "deep acceptances and rejections both occur"


def test_statistical_test_detects_a_biased_verifier():
    """The same bound rejects a plausible bug (children scored with the root's distribution): the test has power."""
    n = 8000
    first, second, accepted, probs_NV, parents, tokens = draw_two_tokens("children_most_mass", n, 4, seed=11,
                                                                          wrong_child_probs=True)
    drawn = first == tokens[1]  # the root's first child, token 2
    m = int(drawn.sum())
    tv_second = 0.5 * (empirical(second[drawn], V_TOY) - probs_NV[1]).abs().sum()
    assert tv_second > 3 * tv_bound(V_TOY, m), (m, float(tv_second))


@pytest.mark.sglang
@pytest.mark.parametrize("B,N,V,steps,seed", [(1, 1, 3, 1, 0), (4, 9, 2, 9, 1), (3, 24, 3, 6, 2), (2, 40, 4, 40, 3)])
def test_one_hot_target_equals_the_greedy_walk(B, N, V, steps, seed):
    """accept_index / accept_token_num / predicts layout: with a one-hot target the sampled walk is the greedy
    walk of verify_tree_greedy_cpu (duplicate sibling tokens included: the first match wins in both)."""
    sgl_kernel = pytest.importorskip("sgl_kernel")
    import sglang_fixtures as fx

    gen = torch.Generator().manual_seed(seed)
    parents = fx.random_parents(B, N, gen)
    candidates = torch.randint(0, V, (B, N), generator=gen)
    target = fx.choices_along_paths(candidates, parents, gen, V)
    retrieve_index, first_child, next_sibling = build_retrieve_links(parents)
    links = dict(candidates=candidates, retrive_index=retrieve_index, retrive_next_token=first_child,
                 retrive_next_sibling=next_sibling)

    def outputs():
        return (torch.zeros(B * N, dtype=torch.int32), torch.full((B, steps), -1, dtype=torch.int32),
                torch.full((B,), -5, dtype=torch.int32))

    greedy = outputs()
    sgl_kernel.verify_tree_greedy_cpu(*greedy, target_predict=target, **links)
    sampled = outputs()
    one_hot = torch.nn.functional.one_hot(target, V).float()  # [B, N, V]
    tree_speculative_sampling_target_only(*sampled, uniform_samples=torch.rand(B, N, generator=gen),
                                          uniform_samples_for_final_sampling=torch.rand(B, generator=gen),
                                          target_probs=one_hot, draft_probs=torch.zeros_like(one_hot), **links)
    for name, got, want in zip(("predicts", "accept_index", "accept_token_num"), sampled, greedy):
        assert torch.equal(got, want), f"{name}:\n{got}\nvs greedy\n{want}"
    if N > 8:
        assert int(greedy[2].max()) >= 2  # not vacuous


@pytest.mark.parametrize("arg", ["candidates", "retrive_next_token", "accept_index", "target_probs"])
def test_twin_refuses_what_the_cuda_kernel_refuses(arg):
    """A strided view (the CUDA kernel's TensorMatcher requires contiguous memory) or a wrong dtype fails on CPU
    as it would on the GPU, naming the argument."""
    B, N, V = 2, 5, 4
    parents = torch.tensor([[-1, 0, 0, 1, 1]] * B)
    retrieve_index, first_child, next_sibling = build_retrieve_links(parents)
    args = dict(predicts=torch.zeros(B * N, dtype=torch.int32), accept_index=torch.full((B, 3), -1, dtype=torch.int32),
                accept_token_num=torch.zeros(B, dtype=torch.int32), candidates=torch.randint(0, V, (B, N)),
                retrive_index=retrieve_index, retrive_next_token=first_child, retrive_next_sibling=next_sibling,
                uniform_samples=torch.rand(B, N), uniform_samples_for_final_sampling=torch.rand(B),
                target_probs=torch.full((B, N, V), 1 / V), draft_probs=torch.zeros(B, N, V))
    tree_speculative_sampling_target_only(**{k: v.clone() for k, v in args.items()})  # served as given
    strided = torch.zeros(args[arg].shape + (2,), dtype=args[arg].dtype)[..., 0]
    strided.copy_(args[arg])
    with pytest.raises(ValueError, match=rf"{arg} is not contiguous"):
        tree_speculative_sampling_target_only(**dict(args, **{arg: strided}))
    wrong = args[arg].to(torch.float64 if args[arg].is_floating_point() else torch.int16)
    with pytest.raises(ValueError, match=rf"{arg} is .*{wrong.dtype}; the CUDA kernel expects"):
        tree_speculative_sampling_target_only(**dict(args, **{arg: wrong}))


# ---------------------------------------------------------------- install()


@pytest.fixture
def eagle_utils():
    """sglang.srt.speculative.eagle_utils with every attribute install() touches restored afterwards."""
    pytest.importorskip("sglang")
    import sglang.srt.speculative.eagle_utils as module

    names = ("_verify_uses_greedy", "tree_speculative_sampling_target_only", "top_k_renorm_prob",
             "top_p_renorm_prob", "_jetspec_cpu_sampling")
    saved = {name: getattr(module, name) for name in names if hasattr(module, name)}
    yield module
    for name in names:
        if name in saved:
            setattr(module, name, saved[name])
        elif hasattr(module, name):
            delattr(module, name)


@pytest.mark.sglang
def test_install_binds_the_stand_ins_and_unlocks_sampled_verify_on_cpu(eagle_utils):
    flags = dict(is_all_greedy=False, is_cpu=True, is_hip=False, is_xpu=False, use_rejection_sampling=False)
    assert eagle_utils._verify_uses_greedy(**flags) is True  # stock SGLang: CPU always verifies greedily
    install()
    assert eagle_utils.tree_speculative_sampling_target_only is tree_speculative_sampling_target_only
    assert eagle_utils.top_k_renorm_prob is top_k_renorm_prob
    assert eagle_utils.top_p_renorm_prob is top_p_renorm_prob
    assert eagle_utils._verify_uses_greedy(**flags) is False
    assert eagle_utils._verify_uses_greedy(**{**flags, "is_all_greedy": True}) is True  # greedy batches stay greedy
    assert eagle_utils._verify_uses_greedy(**{**flags, "is_xpu": True}) is True  # other platforms untouched
    patched = eagle_utils._verify_uses_greedy
    install()  # idempotent: no second wrapper around the first
    assert eagle_utils._verify_uses_greedy is patched


@pytest.mark.sglang
def test_fixture_restores_eagle_utils(eagle_utils):
    """Guard for the fixture above: after the previous test the module is stock again."""
    assert not hasattr(eagle_utils, "_jetspec_cpu_sampling")
    assert eagle_utils.tree_speculative_sampling_target_only is not tree_speculative_sampling_target_only
