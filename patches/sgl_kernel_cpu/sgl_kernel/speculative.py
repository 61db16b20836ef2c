"""sgl_kernel.speculative on CPU: reconstruct_indices_from_tree_mask (SGLang's NGRAM tree links).

Same contract as SGLang's `reconstruct_indices_from_tree_mask_triton`
(sglang/kernels/ops/speculative/reconstruct_tree.py): from a [bs, n, n] ancestor-or-self mask (parent index <
child index), write positions (#strict ancestors + verified length), retrieve_index (b*n + i), the first child
and the next sibling of every node (-1 when none).
"""
import torch


def reconstruct_indices_from_tree_mask(tree_mask, verified_seq_len, positions, retrieve_index, retrieve_next_token,
                                       retrieve_next_sibling, batch_size, draft_token_num) -> None:
    from sgl_kernel import expect

    n, bs = int(draft_token_num), int(batch_size)
    op = "speculative.reconstruct_indices_from_tree_mask"  # the CUDA op's checks (jit/csrc/speculative/tree.cuh)
    expect(op, "tree_mask", tree_mask)
    if tree_mask.element_size() != 1 or tree_mask.numel() < bs * n * n:
        raise ValueError(f"sgl_kernel.{op}: tree_mask must hold >= bs*n*n = {bs * n * n} one-byte elements, got "
                         f"{tree_mask.numel()} x {tree_mask.dtype}")
    expect(op, "verified_seq_len", verified_seq_len, (bs,), torch.int64)
    for name, t in dict(positions=positions, retrieve_index=retrieve_index, retrieve_next_token=retrieve_next_token,
                        retrieve_next_sibling=retrieve_next_sibling).items():
        expect(op, name, t, dtype=torch.int64)  # [bs * n] or [bs, n]: the CUDA op checks [bs, n], Triton neither
        if t.numel() != bs * n:
            raise ValueError(f"sgl_kernel.{op}: {name} has {t.numel()} elements, expected bs * n = {bs * n}")
    mask = tree_mask.view(-1)[: bs * n * n].view(bs, n, n).to(torch.bool)
    idx = torch.arange(n)
    strict = mask & (idx[None, None, :] < idx[None, :, None])  # [b, i, j]: j is a strict ancestor of i
    depth = strict.sum(-1)
    positions.view(-1)[: bs * n] = (depth + verified_seq_len.reshape(bs, 1).to(torch.int64)).reshape(-1).to(
        positions.dtype)
    retrieve_index.view(-1)[: bs * n] = (torch.arange(bs)[:, None] * n + idx[None, :]).reshape(-1).to(
        retrieve_index.dtype)
    cols = idx.expand(bs, n, n)
    parent = torch.where(strict, cols, -1).amax(-1)  # deepest strict ancestor
    big = torch.full_like(cols, n)
    first_child = torch.where(parent[:, None, :] == idx[None, :, None], cols, big).amin(-1)
    later = idx[None, None, :] > idx[None, :, None]
    same_parent = (parent[:, None, :] == parent[:, :, None]) & later & (parent >= 0)[:, :, None]
    next_sibling = torch.where(same_parent, cols, big).amin(-1)
    retrieve_next_token.view(-1)[: bs * n] = torch.where(first_child >= n, -1, first_child).reshape(-1).to(
        retrieve_next_token.dtype)
    retrieve_next_sibling.view(-1)[: bs * n] = torch.where(next_sibling >= n, -1, next_sibling).reshape(-1).to(
        retrieve_next_sibling.dtype)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    from sgl_kernel import _unsupported

    return _unsupported(f"speculative.{name}", "not on the plain or JETSPEC CPU path")
