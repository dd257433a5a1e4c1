"""Tests of the product-key memory: exact search, padding-aware batch norm, training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnzoo.attention.product_key import (
    GatheredWeightGrad,
    MemoryUsage,
    ProductKeyMemory,
    WeightedRowSum,
    candidate_pairs,
    memory_usage,
)


def tiny(**overrides) -> ProductKeyMemory:
    config = dict(dim=8, n_keys=6, heads=2, k_dim=4, topk=3)
    config.update(overrides)
    return ProductKeyMemory(**config)


def brute_force(memory: ProductKeyMemory, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every one of the n_keys ** 2 full keys, take the global top-k, softmax, read.

    Returns the output ``(batch, seq, v_dim)`` and the slots ``(batch, seq, heads, topk)``.
    """
    batch, seq, _ = x.shape
    n, half = memory.n_keys, memory.k_dim // 2
    query = memory.queries(x.reshape(batch * seq, -1))  # (rows, heads, k_dim)
    first = memory.keys[:, 0, :, None, :].expand(-1, n, n, half)  # key i of slot (i, j)
    second = memory.keys[:, 1, None, :, :].expand(-1, n, n, half)  # key j of slot (i, j)
    full_keys = torch.cat([first, second], dim=-1).reshape(memory.heads, n * n, memory.k_dim)
    scores = torch.einsum("rhd,hsd->rhs", query, full_keys)  # all slots
    top, slots = scores.topk(memory.topk, dim=-1)
    weights = torch.softmax(top, dim=-1)
    values = memory.values.weight[slots]  # (rows, heads, topk, v_dim)
    output = torch.einsum("rhk,rhkv->rv", weights, values)  # heads summed
    return output.view(batch, seq, -1), slots.view(batch, seq, memory.heads, memory.topk)


# ----------------------------------------------------------------------------- shapes


def test_output_shape_is_that_of_a_feed_forward_layer():
    memory = tiny()
    x = torch.randn(3, 5, 8)
    assert memory(x).shape == (3, 5, 8)


def test_v_dim_sets_output_width_and_value_table():
    memory = tiny(v_dim=12)
    assert memory.values.weight.shape == (36, 12)
    assert memory.keys.shape == (2, 2, 6, 2)
    assert memory(torch.randn(2, 4, 8)).shape == (2, 4, 12)


def test_initialisation_follows_reference_bounds():
    torch.manual_seed(0)
    memory = ProductKeyMemory(dim=16, n_keys=64, heads=2, k_dim=32, topk=4, v_dim=64)
    bound = 1 / math.sqrt(16)  # half-key width
    assert memory.keys.abs().max() <= bound
    assert memory.keys.abs().max() > 0.95 * bound
    std = memory.values.weight.std().item()
    assert abs(std - 64**-0.5) < 0.01


# ------------------------------------------------------------------- exact search


@pytest.mark.parametrize("query_norm", ["batchnorm", "layernorm", None])
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-6), (torch.float64, 1e-10)])
def test_equals_brute_force_over_all_product_keys(query_norm, dtype, atol):
    torch.manual_seed(1)
    memory = tiny(query_norm=query_norm).to(dtype).eval()
    x = torch.randn(4, 7, 8, dtype=dtype)
    with torch.no_grad():
        output, slots, _ = memory(x, return_indices=True)
        expected, expected_slots = brute_force(memory, x)
    assert torch.equal(slots, expected_slots)
    assert (output - expected).abs().max().item() <= atol


def test_equals_brute_force_in_training_mode():
    # In training the batch norm uses the batch statistics; the search must stay exact.
    torch.manual_seed(2)
    memory = tiny().double().train()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    output = memory(x)
    expected, _ = brute_force(memory, x)
    assert (output - expected).abs().max().item() <= 1e-10


@settings(max_examples=25, deadline=None)
@given(
    n_keys=st.integers(1, 9),
    heads=st.integers(1, 3),
    half=st.integers(1, 3),
    topk_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_exact_search_property(n_keys, heads, half, topk_fraction, seed):
    torch.manual_seed(seed)
    topk = max(1, round(topk_fraction * n_keys))
    memory = ProductKeyMemory(
        dim=5, n_keys=n_keys, heads=heads, k_dim=2 * half, topk=topk, query_norm=None
    ).double()
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        output = memory(x)
        expected, _ = brute_force(memory, x)
    assert (output - expected).abs().max().item() <= 1e-10


def test_scores_are_sorted_and_weights_normalised():
    torch.manual_seed(3)
    memory = tiny().eval()
    _, slots, weights = memory(torch.randn(2, 4, 8), return_indices=True)
    assert slots.shape == weights.shape == (2, 4, 2, 3)
    assert slots.min() >= 0 and slots.max() < 36
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 2))
    assert (weights[..., :-1] >= weights[..., 1:]).all()  # softmax of sorted scores


def test_sparsemax_normalizer_reads_sparse_weights():
    torch.manual_seed(4)
    memory = tiny(n_keys=8, topk=8, normalizer="sparsemax").eval()
    with torch.no_grad():
        memory.query_proj.weight.mul_(20.0)  # spread the scores so sparsemax truncates
    _, _, weights = memory(torch.randn(2, 5, 8), return_indices=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5, 2))
    assert (weights == 0).any()


# ------------------------------------------------------------------------ padding


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    x = torch.randn(3, 6, 8)
    lengths = torch.tensor([6, 2, 4])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    return x, mask


def test_batchnorm_statistics_ignore_padding():
    x, mask = padded_batch()
    memory = tiny().train()
    memory(x, mask)
    reference = nn.BatchNorm1d(memory.heads * memory.k_dim)
    with torch.no_grad():
        reference(memory.query_proj(x[mask]))
    torch.testing.assert_close(memory.query_norm.running_mean, reference.running_mean)
    torch.testing.assert_close(memory.query_norm.running_var, reference.running_var)
    # Sanity check that the test can fail: padding included gives other statistics.
    polluted = nn.BatchNorm1d(memory.heads * memory.k_dim)
    with torch.no_grad():
        polluted(memory.query_proj(x.reshape(-1, 8)))
    assert not torch.allclose(polluted.running_mean, reference.running_mean)


def test_padded_inputs_change_nothing():
    x, mask = padded_batch()
    memory = tiny().train()
    other = copy.deepcopy(memory)
    garbage = x.masked_fill(~mask[..., None], 1e4)
    out = memory(x, mask)
    out_garbage = other(garbage, mask)
    assert torch.equal(out, out_garbage)
    assert torch.equal(memory.query_norm.running_mean, other.query_norm.running_mean)
    assert torch.equal(memory.query_norm.running_var, other.query_norm.running_var)
    assert (out[~mask] == 0).all()
    out.square().sum().backward()
    out_garbage.square().sum().backward()
    for (name, p), q in zip(memory.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)


def test_masked_output_equals_output_on_real_rows_only():
    x, mask = padded_batch()
    memory = tiny().train()
    other = copy.deepcopy(memory)
    out = memory(x, mask)
    real = other(x[mask].unsqueeze(0))[0]
    torch.testing.assert_close(out[mask], real)


def test_return_indices_marks_padding():
    x, mask = padded_batch()
    memory = tiny().eval()
    _, slots, weights = memory(x, mask, return_indices=True)
    assert (slots[~mask] == -1).all() and (weights[~mask] == 0).all()
    assert (slots[mask] >= 0).all()
    torch.testing.assert_close(weights[mask].sum(-1), torch.ones(int(mask.sum()), 2))


def test_fully_padded_batch_gives_zeros_in_training():
    memory = tiny().train()
    x = torch.randn(2, 3, 8, requires_grad=True)
    out = memory(x, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 3, 8))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------------------------- gradients


def test_gradients_reach_keys_values_and_query_network():
    torch.manual_seed(6)
    memory = tiny()
    memory(torch.randn(2, 5, 8)).square().sum().backward()
    for name in ("keys", "values.weight", "query_proj.weight", "query_proj.bias"):
        grad = memory.get_parameter(name).grad
        assert grad is not None and not grad.is_sparse, name
        assert grad.abs().sum() > 0, name
    assert memory.query_norm.weight.grad.abs().sum() > 0


def test_sparse_values_get_sparse_gradients():
    torch.manual_seed(7)
    memory = tiny(sparse=True)
    dense = copy.deepcopy(memory)
    dense.values.sparse = False
    x = torch.randn(2, 5, 8)
    memory(x).square().sum().backward()
    dense(x).square().sum().backward()
    grad = memory.values.weight.grad
    assert grad.is_sparse and not dense.values.weight.grad.is_sparse
    touched = grad.coalesce().indices()[0].unique()
    assert 0 < touched.numel() <= 2 * 5 * memory.heads * memory.topk
    # The sparse gradient is the dense one, stored only for the slots read.
    torch.testing.assert_close(grad.to_dense(), dense.values.weight.grad)
    before = memory.values.weight.detach().clone()
    torch.optim.SparseAdam([memory.values.weight], lr=1e-3).step()
    changed = (memory.values.weight != before).any(-1).nonzero().flatten()
    assert set(changed.tolist()) <= set(touched.tolist())


def test_drop_in_replacement_in_residual_block_trains():
    torch.manual_seed(8)
    dim = 16

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.ff = ProductKeyMemory(dim, n_keys=16, heads=2, k_dim=16, topk=4)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return x + self.ff(self.norm(x), mask)

    block = Block()
    target_map = nn.Linear(dim, dim)
    x = torch.randn(8, 10, dim)
    mask = torch.arange(10)[None, :] < torch.randint(4, 11, (8,))[:, None]
    with torch.no_grad():
        target = x + torch.tanh(target_map(x))

    def loss_fn() -> torch.Tensor:
        return (block(x, mask) - target)[mask].square().mean()

    optimiser = torch.optim.Adam(block.parameters(), lr=1e-2)
    initial = loss_fn().item()
    for _ in range(40):
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimiser.step()
    assert loss_fn().item() < 0.8 * initial


# ---------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_forward(dtype):
    torch.manual_seed(9)
    memory = tiny().to(dtype).eval()
    out, _, weights = memory(torch.randn(2, 3, 8, dtype=dtype), return_indices=True)
    assert out.dtype == dtype and weights.dtype == dtype
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ memory usage


def test_memory_usage_hand_cases():
    # 2 sub-keys -> 4 slots; half the slots read with equal weight: KL = log 4 - log 2.
    stats = memory_usage(torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]), n_keys=2)
    assert isinstance(stats, MemoryUsage)
    assert stats.fraction_used == 0.5
    assert math.isclose(stats.kl_uniform, math.log(2), abs_tol=1e-12)
    uniform = memory_usage(torch.arange(4)[None], torch.full((1, 4), 0.25), n_keys=2)
    assert uniform.fraction_used == 1.0 and abs(uniform.kl_uniform) < 1e-12
    single = memory_usage(torch.tensor([[3, 3]]), torch.tensor([[0.7, 0.3]]), n_keys=2)
    assert single.fraction_used == 0.25
    assert math.isclose(single.kl_uniform, math.log(4), abs_tol=1e-12)


def test_memory_usage_ignores_padding_of_a_forward_pass():
    x, mask = padded_batch()
    memory = tiny().eval()
    _, slots, weights = memory(x, mask, return_indices=True)
    stats = memory_usage(slots, weights, memory.n_keys)
    real = memory_usage(slots[mask], weights[mask], memory.n_keys)
    assert stats == real
    assert 0 < stats.fraction_used <= 1 and 0 <= stats.kl_uniform <= math.log(36)


def test_memory_usage_errors():
    with pytest.raises(ValueError, match="weights"):
        memory_usage(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4), n_keys=2)
    with pytest.raises(ValueError, match="indices"):
        memory_usage(torch.tensor([4]), torch.ones(1), n_keys=2)
    with pytest.raises(TypeError, match="indices"):
        memory_usage(torch.zeros(2), torch.ones(2), n_keys=2)
    with pytest.raises(ValueError, match="weights"):
        memory_usage(torch.tensor([-1]), torch.ones(1), n_keys=2)


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"topk": 7}, "topk"),
        ({"topk": 0}, "topk"),
        ({"k_dim": 5}, "k_dim"),
        ({"heads": 0}, "heads"),
        ({"n_keys": 0}, "n_keys"),
        ({"v_dim": 0}, "v_dim"),
        ({"query_norm": "groupnorm"}, "query_norm"),
        ({"value_dropout": 1.0}, "value_dropout"),
        ({"normalizer": "nope"}, "normalizer"),
    ],
)
def test_bad_arguments_name_the_argument(overrides, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny(**overrides)


def test_bad_inputs_name_the_argument():
    memory = tiny()
    with pytest.raises(ValueError, match="`x`.*3 dimensions"):
        memory(torch.randn(4, 8))
    with pytest.raises(ValueError, match="`x`.*dim = 8"):
        memory(torch.randn(2, 3, 7))
    with pytest.raises(TypeError, match="`mask`"):
        memory(torch.randn(2, 3, 8), torch.ones(2, 3))
    with pytest.raises(ValueError, match="`mask`"):
        memory(torch.randn(2, 3, 8), torch.ones(2, 4, dtype=torch.bool))


# ----------------------------------------------------- candidate pairs and the read


@pytest.mark.parametrize("topk", [1, 2, 5, 32])
def test_candidate_pairs_are_the_pairs_that_can_win(topk):
    first, second = candidate_pairs(topk)
    assert first.numel() == sum(topk // (a + 1) for a in range(topk))
    assert ((first + 1) * (second + 1) <= topk).all()
    torch.manual_seed(topk)
    for _ in range(20):
        a = torch.randn(topk).sort(descending=True).values
        b = torch.randn(topk).sort(descending=True).values
        everything = (a[:, None] + b[None, :]).flatten().topk(topk).values
        torch.testing.assert_close(
            (a[first] + b[second]).topk(topk).values, everything, rtol=0, atol=0
        )


def test_candidate_pairs_rejects_a_bad_topk():
    with pytest.raises(ValueError, match="`topk`"):
        candidate_pairs(0)


def read_case(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small table read with repeats: 8 slots (6 and 7 never read), 7 tokens of 6 reads."""
    generator = torch.Generator().manual_seed(11)
    table = torch.randn(8, 3, dtype=dtype, generator=generator)
    indices = torch.randint(0, 6, (7, 6), generator=generator)
    indices[0] = 2  # one token reading a single slot six times
    weights = torch.rand(7, 6, dtype=dtype, generator=generator)
    return table, indices, weights


@pytest.mark.parametrize("sparse", [False, True])
def test_weighted_row_sum_equals_embedding_bag(sparse):
    table, indices, weights = read_case(torch.float32)
    table.requires_grad_()
    weights.requires_grad_()
    grad_out = torch.randn(7, 3)
    out = WeightedRowSum.apply(table, indices, weights, sparse)
    grads = torch.autograd.grad(out, (table, weights), grad_out)
    expected = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
    expected_grads = torch.autograd.grad(expected, (table, weights), grad_out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert grads[0].is_sparse == sparse
    if sparse:
        assert grads[0].is_coalesced()
        assert set(grads[0].indices()[0].tolist()) == set(indices.flatten().tolist())
    assert (grads[0].to_dense()[6:] == 0).all()
    torch.testing.assert_close(grads[0].to_dense(), expected_grads[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[1], expected_grads[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("function", [WeightedRowSum, GatheredWeightGrad])
def test_row_sum_gradcheck(function):
    table, indices, weights = read_case(torch.float64)
    table.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, w: function.apply(t, indices, w, False), (table, weights)
    )


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathered_weight_grad_equals_embedding_bag(sparse, dtype, monkeypatch):
    # Blocks of 2 tokens (7 tokens: the last block ragged); on the CPU, where EmbeddingBag
    # has the bfloat16 weight gradient to compare with.
    from attnzoo.attention import product_key

    monkeypatch.setattr(product_key, "GATHER_ENTRIES", 2 * 6 * 3)
    table, indices, weights = read_case(dtype)
    table.requires_grad_()
    weights.requires_grad_()
    grad_out = torch.randn(7, 3).to(dtype)
    out = GatheredWeightGrad.apply(table, indices, weights, sparse)
    grads = torch.autograd.grad(out, (table, weights), grad_out)
    expected = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
    expected_grads = torch.autograd.grad(expected, (table, weights), grad_out)
    # bfloat16: both sides round sums of a few terms to 8 bits: a few ulps (2 ** -8) apart.
    tol = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2**-6, "atol": 1e-2}
    assert out.dtype == dtype and grads[1].dtype == dtype and grads[0].is_sparse == sparse
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(grads[0].to_dense(), expected_grads[0].to_dense(), **tol)
    torch.testing.assert_close(grads[1], expected_grads[1], **tol)


def graph_nodes(output: torch.Tensor) -> set[str]:
    """Names of the autograd nodes that ``output`` was computed through."""
    names, stack, seen = set(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def brute_force_rows(memory: ProductKeyMemory, rows: torch.Tensor) -> torch.Tensor:
    """``brute_force`` on a flat ``(n, dim)`` set of real tokens; output ``(n, v_dim)``."""
    return brute_force(memory, rows[None])[0][0]


@pytest.mark.parametrize(
    ("query_norm", "topk", "dtype", "atol"),
    [
        ("batchnorm", 3, torch.float32, 1e-5),
        ("layernorm", 1, torch.float32, 1e-5),
        (None, 5, torch.float64, 1e-10),
        ("batchnorm", 1, torch.float64, 1e-10),
    ],
)
def test_every_gradient_equals_brute_force_with_padding(query_norm, topk, dtype, atol):
    torch.manual_seed(12)
    config = dict(dim=7, n_keys=5, heads=3, k_dim=6, topk=topk, v_dim=9, query_norm=query_norm)
    memory = ProductKeyMemory(**config).to(dtype).train()
    reference = copy.deepcopy(memory)
    x = torch.randn(3, 5, 7, dtype=dtype)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 1, 3])[:, None]
    x_ours = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    grad_out = torch.randn(3, 5, 9, dtype=dtype)

    out = memory(x_ours, mask)
    assert "WeightedRowSumBackward" in graph_nodes(out)
    expected = torch.zeros_like(out).index_put((mask,), brute_force_rows(reference, x_ref[mask]))
    torch.testing.assert_close(out, expected, rtol=0, atol=atol)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=atol)
    names = [name for name, _ in memory.named_parameters()]
    assert {"keys", "values.weight", "query_proj.weight", "query_proj.bias"} <= set(names)
    for (name, p), q in zip(memory.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=atol, msg=name)


def test_module_gradcheck_in_float64():
    torch.manual_seed(13)
    memory = tiny(query_norm="layernorm", n_keys=4, topk=2).double().eval()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    params = (memory.keys, memory.values.weight, memory.query_proj.weight)
    assert torch.autograd.gradcheck(lambda x, *_: memory(x), (x, *params))


# ------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    def test_matches_cpu(self):
        torch.manual_seed(10)
        memory = tiny().eval()
        x, mask = padded_batch()
        expected = memory(x, mask)
        out = memory.cuda()(x.cuda(), mask.cuda())
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision_training_step(self, dtype):
        memory = tiny(sparse=True).to("cuda", dtype).train()
        x, mask = padded_batch()
        out = memory(x.to("cuda", dtype), mask.cuda())
        out.float().square().sum().backward()
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert memory.values.weight.grad.is_sparse
        # The keys learn through the read weights: the gradient PyTorch's EmbeddingBag
        # lacks on CUDA in bfloat16 (GatheredWeightGrad forms it there).
        assert torch.isfinite(memory.keys.grad).all() and memory.keys.grad.abs().sum() > 0
