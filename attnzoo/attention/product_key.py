"""Product-key memory (Lample et al. 2019, "Large Memory Layers with Product Keys").

A product-key memory is a key-value memory with ``n_keys ** 2`` slots whose keys are never
stored: key ``(i, j)`` is the concatenation of sub-key ``i`` of a first set and sub-key ``j``
of a second set, each set holding ``n_keys`` vectors of size ``k_dim / 2``. A query is split
in halves, each half is scored against its own sub-key set, and because the score of a
product key is the sum of its two half scores, the exact top-k over all ``n_keys ** 2``
keys is found among the ``topk * topk`` sums of the two per-half top-k lists. A read
touches ``heads * topk`` value rows out of ``n_keys ** 2``, so the memory can be very large
at the cost of a small feed-forward layer.

The behaviour follows the reference implementation released with the paper (the XLM
repository): a linear query network followed by batch normalisation of the queries, one
pair of sub-key sets per head, a softmax over each head's final top-k scores, and the
heads summed into one output through a single shared value table (an
``nn.EmbeddingBag(mode="sum")`` holding the parameter).

Two things keep a read cheap on a CPU. The search sums only the pairs of the two sorted
per-half top-k lists that can win, about ``topk * ln(topk)`` of the ``topk ** 2``
(:func:`candidate_pairs`). The value read's backward (:class:`WeightedRowSum`) sorts the
reads by slot once, then writes each row of the value gradient once and reads the value
rows in order, instead of scattering into and gathering from the large table at random.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .normalizers import Normalizer, get_normalizer
from .validation import (
    check_bool_mask,
    check_int,
    check_probability,
    check_rank,
    check_size,
    check_tensor,
)

QUERY_NORMS = ("batchnorm", "layernorm", None)

# Value reads that take the slot-sorted backward of ``WeightedRowSum``: on a CPU, in the
# dtypes of PyTorch's CPU sampled dense-dense product. Others (CUDA, where EmbeddingBag's
# own backward is parallel, half precision, an empty batch) keep ``nn.EmbeddingBag``.
SORTED_BACKWARD_DTYPES = (torch.float32, torch.float64)
# Value reads whose weights' gradient :class:`GatheredWeightGrad` computes: off the CPU,
# the dtypes for which PyTorch has no EmbeddingBag per_sample_weights gradient kernel
# (its CUDA kernel is built for float, double and half only).
GATHERED_WEIGHT_GRAD_DTYPES = (torch.bfloat16,)
# Entries of value rows that GatheredWeightGrad gathers at once: bounds its scratch.
GATHER_ENTRIES = 2**24


def candidate_pairs(topk: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Positions ``(a, b)`` in two sorted top-k lists whose sum can be among the best ``topk``.

    With both lists sorted in decreasing order, the pair ``(a, b)`` is beaten or tied by
    every ``(a', b')`` with ``a' <= a`` and ``b' <= b``: ``(a + 1) * (b + 1) - 1`` pairs. It
    can only be among the best ``topk`` sums when ``(a + 1) * (b + 1) <= topk`` (beyond
    that, only by a tie with sums already in). That leaves ``sum_a floor(topk / (a + 1))``
    pairs, about ``topk * ln(topk)`` (119 for ``topk = 32``) instead of ``topk ** 2``.

    Returns:
        ``first`` and ``second``, int64 ``(pairs,)``: the position in each list.
    """
    check_int(topk, "topk")
    first = torch.cat([torch.full((topk // (a + 1),), a) for a in range(topk)])
    second = torch.cat([torch.arange(topk // (a + 1)) for a in range(topk)])
    return first.to(device), second.to(device)


@functools.lru_cache(maxsize=64)
def _shared_candidate_pairs(topk: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`candidate_pairs`, built once per ``(topk, device)``; never written to.

    A cache rather than module buffers, so that ``to_empty`` or a meta-device build
    cannot leave a memory with uninitialised pair positions.
    """
    return candidate_pairs(topk, device)


class WeightedRowSum(torch.autograd.Function):
    """``out[t] = sum_j weights[t, j] * table[indices[t, j]]`` with a slot-sorted backward.

    The forward is ``F.embedding_bag(indices, table, per_sample_weights=weights,
    mode="sum")``. The backward sorts the reads by slot once. Then the table's gradient,
    ``A^T @ grad_out`` for the ``(tokens, slots)`` matrix ``A`` of read weights, is again a
    weighted bag sum: one bag per slot, summing rows of the small ``grad_out``, so every
    gradient row is written once (no zero fill and scattered accumulation into the large
    table). The weights' gradient ``table[indices[t, j]] . grad_out[t]`` is a sampled
    dense-dense product of ``table`` and ``grad_out`` over the pattern of ``A^T``, which
    reads the table's rows in order instead of gathering them at random.

    Forward arguments: ``table`` ``(slots, dim)`` float32/float64, ``indices`` int64
    ``(tokens, reads)`` all in ``[0, slots)``, ``weights`` ``(tokens, reads)`` in the
    table's dtype, ``sparse_grad`` (the table's gradient as a coalesced sparse COO tensor
    over the slots read). Returns ``(tokens, dim)``.
    """

    @staticmethod
    def forward(
        ctx: Any, table: Tensor, indices: Tensor, weights: Tensor, sparse_grad: bool
    ) -> Tensor:
        ctx.save_for_backward(table, indices, weights)
        ctx.sparse_grad = sparse_grad
        return F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None, None]:
        table, indices, weights = ctx.saved_tensors
        tokens, reads = indices.shape
        slots = table.shape[0]
        grad_out = grad_out.contiguous()
        # Reads sorted by (slot, token): slot-major, tokens ascending within a slot.
        token = torch.arange(tokens, device=indices.device).repeat_interleave(reads)
        keys, order = (indices.reshape(-1) * tokens + token).sort()
        slot = torch.div(keys, tokens, rounding_mode="floor")
        counts = torch.bincount(slot, minlength=slots)

        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            # One bag per slot (per slot read, for a sparse gradient) over grad_out's rows.
            read = counts.nonzero().flatten() if ctx.sparse_grad else None
            bag_sizes = counts if read is None else counts[read]
            offsets = torch.cumsum(bag_sizes, 0) - bag_sizes
            rows = F.embedding_bag(
                keys % tokens,  # the tokens, in slot order
                grad_out,
                offsets,
                mode="sum",
                per_sample_weights=weights.reshape(-1)[order],
            )
            if read is None:
                grad_table = rows
            else:
                grad_table = torch.sparse_coo_tensor(
                    read[None], rows, table.shape, is_coalesced=True, check_invariants=False
                )
        if ctx.needs_input_grad[2]:
            # A token reading a slot from several heads is one entry of A^T: merge them.
            pairs, inverse = torch.unique_consecutive(keys, return_inverse=True)
            pair_slot = torch.div(pairs, tokens, rounding_mode="floor")
            row_starts = counts.new_zeros(slots + 1)
            torch.cumsum(torch.bincount(pair_slot, minlength=slots), 0, out=row_starts[1:])
            entries = table.new_zeros(pairs.numel())  # beta = 0: only the pattern counts
            pattern = _csr(row_starts, pairs % tokens, entries, (slots, tokens))
            # (table @ grad_out^T) at the pattern's entries only: one dot product per pair.
            dots = torch.sparse.sampled_addmm(pattern, table, grad_out.t(), beta=0.0).values()
            grad_weights = torch.empty_like(weights).reshape(-1)
            grad_weights[order] = dots[inverse]
            grad_weights = grad_weights.view(tokens, reads)
        return grad_table, None, grad_weights, None


class GatheredWeightGrad(WeightedRowSum):
    """``out[t] = sum_j weights[t, j] * table[indices[t, j]]``; the weights' gradient from
    gathered rows.

    The forward is :class:`WeightedRowSum`'s (``F.embedding_bag``), and so is its table's
    gradient, by autograd through a second bag sum with the weights held constant. The
    weights' gradient ``table[indices[t, j]] . grad_out[t]`` is formed from the rows
    gathered a block of tokens at a time (at most :data:`GATHER_ENTRIES` entries), in
    float32: for the dtypes in which PyTorch's EmbeddingBag has no such gradient on the
    device.

    Forward arguments as :class:`WeightedRowSum`, in any floating dtype, on any device.
    Returns ``(tokens, dim)``.
    """

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None, None]:
        table, indices, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            with torch.enable_grad():
                leaf = table.detach().requires_grad_()
                out = F.embedding_bag(
                    indices, leaf, per_sample_weights=weights, mode="sum", sparse=ctx.sparse_grad
                )
                (grad_table,) = torch.autograd.grad(out, leaf, grad_out)
        if ctx.needs_input_grad[2]:
            tokens, reads = indices.shape
            block = max(1, GATHER_ENTRIES // max(1, reads * table.shape[1]))
            grad = grad_out.float()
            parts = [
                torch.bmm(
                    F.embedding(indices[start : start + block], table).float(),
                    grad[start : start + block, :, None],
                ).squeeze(-1)
                for start in range(0, tokens, block)
            ]
            grad_weights = torch.cat(parts).to(weights.dtype)
        return grad_table, None, grad_weights, None


def _csr(row_starts: Tensor, columns: Tensor, entries: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix of ``shape`` from components that are valid by construction.

    ``row_starts`` ``(rows + 1,)``; ``columns`` sorted and distinct within each row. The
    invariant check (a pass over every index) is skipped, and PyTorch's one-time warning
    that sparse CSR support is in beta is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(row_starts, columns, entries, shape, check_invariants=False)


class ProductKeyMemory(nn.Module):
    """Product-key memory layer; a drop-in replacement of a feed-forward sub-layer.

    Args:
        dim: input width ``d`` of ``x``.
        n_keys: sub-keys per half; the memory holds ``n_keys ** 2`` values.
        heads: independent read heads (own query slice and own sub-keys, shared values);
            their reads are summed.
        k_dim: query/key width per head; even, as it is split into two halves.
        topk: value slots read per head; at most ``n_keys``.
        v_dim: width of a value and of the output; defaults to ``dim`` (same in/out shape
            as a feed-forward layer).
        query_norm: ``"batchnorm"`` (the paper's choice: BatchNorm1d over the
            ``heads * k_dim`` query features, statistics over real tokens only),
            ``"layernorm"`` (LayerNorm over each head's ``k_dim`` query, independent of
            the batch) or ``None``. As with any ``BatchNorm1d``, a training batch with
            batch norm needs at least two real tokens (a fully padded one is allowed).
        sparse: read the values with ``sparse=True``, so that their gradient is a sparse
            tensor touching only the slots read (use an optimiser that accepts sparse
            gradients, e.g. ``torch.optim.SparseAdam``, for ``values``).
        input_dropout, query_dropout, value_dropout: dropout rates on the input, on the
            normalised queries and on the memory output.
        normalizer: maps each head's ``topk`` scores to read weights; a registry name or a
            callable (see :mod:`attnzoo.attention.normalizers`). ``"softmax"`` is the paper's.

    Shapes:
        ``forward(x, mask)``: ``x`` ``(batch, seq, dim)``, ``mask`` ``(batch, seq)`` boolean
        (True = real token) -> ``(batch, seq, v_dim)``; padded positions output zeros.

    Parameters: ``query_proj`` (Linear ``dim -> heads * k_dim``), ``query_norm``,
    ``keys`` ``(heads, 2, n_keys, k_dim // 2)`` and ``values`` (EmbeddingBag with
    ``n_keys ** 2`` rows of size ``v_dim``).
    """

    def __init__(
        self,
        dim: int,
        n_keys: int = 512,
        heads: int = 4,
        k_dim: int = 256,
        topk: int = 32,
        v_dim: int | None = None,
        query_norm: str | None = "batchnorm",
        sparse: bool = False,
        input_dropout: float = 0.0,
        query_dropout: float = 0.0,
        value_dropout: float = 0.0,
        normalizer: str | Normalizer = "softmax",
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("n_keys", n_keys), ("heads", heads)):
            check_int(value, name)
        check_int(k_dim, "k_dim")
        if k_dim % 2 != 0:
            raise ValueError(
                f"`k_dim` must be even (each query is split into two halves), got {k_dim}"
            )
        check_int(topk, "topk")
        if topk > n_keys:
            raise ValueError(
                f"`topk` must be <= n_keys = {n_keys} (top-k is taken per sub-key set), got {topk}"
            )
        v_dim = dim if v_dim is None else v_dim
        check_int(v_dim, "v_dim")
        if query_norm not in QUERY_NORMS:
            raise ValueError(f"`query_norm` must be one of {QUERY_NORMS}, got {query_norm!r}")
        for name, rate in (
            ("input_dropout", input_dropout),
            ("query_dropout", query_dropout),
            ("value_dropout", value_dropout),
        ):
            check_probability(rate, name)

        self.dim = dim
        self.n_keys = n_keys
        self.heads = heads
        self.k_dim = k_dim
        self.topk = topk
        self.v_dim = v_dim
        self.query_norm_type = query_norm
        self.input_dropout = input_dropout
        self.query_dropout = query_dropout
        self.value_dropout = value_dropout
        self.normalize = get_normalizer(normalizer)

        self.query_proj = nn.Linear(dim, heads * k_dim)
        self.query_norm: nn.Module
        if query_norm == "batchnorm":
            self.query_norm = nn.BatchNorm1d(heads * k_dim)
        elif query_norm == "layernorm":
            self.query_norm = nn.LayerNorm(k_dim)
        else:
            self.query_norm = nn.Identity()
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, k_dim // 2))
        self.values = nn.EmbeddingBag(n_keys**2, v_dim, mode="sum", sparse=sparse)
        self.reset_parameters()

    @property
    def size(self) -> int:
        """Number of value slots, ``n_keys ** 2``."""
        return self.n_keys**2

    def reset_parameters(self) -> None:
        """Initialise as the reference implementation does.

        Sub-keys are uniform in ``±1/sqrt(k_dim // 2)`` (``nn.Linear``'s bound for the
        half-key width); values are normal with std ``v_dim ** -0.5``, so that a read,
        a convex combination of values, starts at the scale of a unit-variance layer.
        The reference draws each head's sub-keys from a fixed NumPy seed; here they come
        from torch's generator, so ``torch.manual_seed`` makes them reproducible.
        """
        bound = 1.0 / math.sqrt(self.k_dim // 2)
        nn.init.uniform_(self.keys, -bound, bound)
        nn.init.normal_(self.values.weight, mean=0.0, std=self.v_dim**-0.5)
        self.query_proj.reset_parameters()
        if isinstance(self.query_norm, (nn.BatchNorm1d, nn.LayerNorm)):
            self.query_norm.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_keys={self.n_keys}, heads={self.heads}, k_dim={self.k_dim}, "
            f"topk={self.topk}, v_dim={self.v_dim}, query_norm={self.query_norm_type!r}"
        )

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_indices: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Read the memory for every real token.

        Only the real tokens (``mask`` True) are projected, normalised and looked up, so
        padding never enters the batch-norm statistics and costs no memory reads.

        Args:
            x: ``(batch, seq, dim)``.
            mask: optional boolean ``(batch, seq)``, True = real token.
            return_indices: also return the slots read and their weights.

        Returns:
            output ``(batch, seq, v_dim)``, zero at padded positions; with
            ``return_indices=True`` also ``indices`` ``(batch, seq, heads, topk)`` (int64
            slots in ``[0, n_keys ** 2)``, ``-1`` at padded positions) and ``weights``
            ``(batch, seq, heads, topk)`` (each head's read weights, 0 at padding), the
            inputs of :func:`memory_usage`.
        """
        check_rank(x, 3, "x", "(batch, seq, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        batch, seq, _ = x.shape
        if mask is None:
            rows = x.reshape(batch * seq, self.dim)
        else:
            check_bool_mask(mask)
            check_rank(mask, 2, "mask", "(batch, seq)")
            if mask.shape != (batch, seq):
                raise ValueError(
                    f"`mask` must have shape (batch, seq) = {(batch, seq)} to match `x`, "
                    f"got {tuple(mask.shape)}"
                )
            rows = x[mask]

        out_rows, idx_rows, w_rows = self.read(rows)

        if mask is None:
            output = out_rows.view(batch, seq, self.v_dim)
            indices = idx_rows.view(batch, seq, self.heads, self.topk)
            weights = w_rows.view(batch, seq, self.heads, self.topk)
        else:
            # Scatter the real rows back; index_put on fresh zeros keeps autograd intact.
            output = out_rows.new_zeros(batch, seq, self.v_dim).index_put((mask,), out_rows)
            indices = idx_rows.new_full((batch, seq, self.heads, self.topk), -1)
            indices = indices.index_put((mask,), idx_rows)
            weights = w_rows.new_zeros(batch, seq, self.heads, self.topk)
            weights = weights.index_put((mask,), w_rows)
        if return_indices:
            return output, indices, weights
        return output

    def read(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Memory read for a flat set of rows (no padding among them).

        Args:
            rows: ``(n, dim)``.

        Returns:
            ``output`` ``(n, v_dim)``, ``indices`` ``(n, heads, topk)`` and ``weights``
            ``(n, heads, topk)``.
        """
        check_rank(rows, 2, "rows", "(n, dim)")
        check_size(rows, -1, self.dim, "rows", "dim")
        n = rows.shape[0]
        query = self.queries(rows)  # (n, heads, k_dim)
        scores, indices = self.search(query)  # (n, heads, topk) each
        weights = self.normalize(scores, dim=-1)
        # All heads index the one value table; summing their reads is a single bag of
        # heads * topk weighted rows per token.
        output = self.read_values(
            indices.reshape(n, self.heads * self.topk),
            weights.reshape(n, self.heads * self.topk).to(self.values.weight.dtype),
        ).to(query.dtype)
        output = F.dropout(output, p=self.value_dropout, training=self.training)
        return output, indices, weights

    def queries(self, rows: Tensor) -> Tensor:
        """Query network: dropout, linear projection, normalisation, dropout.

        Args:
            rows: ``(n, dim)`` real tokens only (batch-norm statistics are taken over them).

        Returns:
            ``(n, heads, k_dim)``.
        """
        n = rows.shape[0]
        rows = F.dropout(rows, p=self.input_dropout, training=self.training)
        query = self.query_proj(rows)  # (n, heads * k_dim)
        # Batch norm rejects an empty batch (a fully padded one); the empty read that
        # follows still returns empty outputs attached to the graph.
        if self.query_norm_type == "batchnorm" and n > 0:
            query = self.query_norm(query)
        query = query.view(n, self.heads, self.k_dim)
        if self.query_norm_type == "layernorm":
            query = self.query_norm(query)
        return F.dropout(query, p=self.query_dropout, training=self.training)

    def read_values(self, indices: Tensor, weights: Tensor) -> Tensor:
        """Weighted sum of value rows: ``out[t] = sum_j weights[t, j] * values[indices[t, j]]``.

        On a CPU in float32/float64 this is :class:`WeightedRowSum` (``EmbeddingBag``'s
        forward, a slot-sorted backward); off the CPU in bfloat16, with a gradient for the
        weights, :class:`GatheredWeightGrad` (PyTorch has no such gradient kernel there);
        elsewhere ``nn.EmbeddingBag`` itself. All honour ``values.sparse``.

        Args:
            indices: ``(n, reads)`` int64 slots, all in ``[0, n_keys ** 2)``.
            weights: ``(n, reads)`` in the value table's dtype.

        Returns:
            ``(n, v_dim)``.
        """
        table = self.values.weight
        if (
            table.device.type == "cpu"
            and table.dtype in SORTED_BACKWARD_DTYPES
            and weights.dtype == table.dtype
            and indices.numel() > 0
        ):
            return WeightedRowSum.apply(
                table, indices.contiguous(), weights.contiguous(), self.values.sparse
            )
        if (
            table.device.type != "cpu"
            and table.dtype in GATHERED_WEIGHT_GRAD_DTYPES
            and torch.is_grad_enabled()
            and weights.requires_grad
            and indices.numel() > 0
        ):
            return GatheredWeightGrad.apply(
                table, indices.contiguous(), weights.contiguous(), self.values.sparse
            )
        return self.values(indices, per_sample_weights=weights)

    def search(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """Exact top-k over the ``n_keys ** 2`` product keys of each head.

        The score of product key ``(i, j)`` is ``s1[i] + s2[j]``. If ``(i, j)`` is among
        the best ``topk`` pairs then ``i`` is among the best ``topk`` of ``s1`` (otherwise
        ``topk`` better ``i'`` would each give a better pair ``(i', j)``), and likewise
        for ``j``; of the ``topk * topk`` sums of the two sorted lists, only the
        :func:`candidate_pairs` can win. The search itself runs without autograd; the
        scores of the winners are then gathered from the sub-key scores, so they stay
        differentiable with respect to the query and the sub-keys. Exact up to the slot
        chosen among exactly tied scores.

        Args:
            query: ``(n, heads, k_dim)``.

        Returns:
            ``scores`` ``(n, heads, topk)`` sorted in decreasing order and ``indices``
            ``(n, heads, topk)``: slots ``i * n_keys + j`` into ``values``.
        """
        n = query.shape[0]
        k, n_keys, heads = self.topk, self.n_keys, self.heads
        # Each head's two halves are two batches of one matrix product: (2 heads, n, n_keys).
        halves = query.reshape(n, 2 * heads, self.k_dim // 2).transpose(0, 1)
        keys = self.keys.to(query.dtype).view(2 * heads, n_keys, self.k_dim // 2)
        sub_scores = torch.bmm(halves, keys.transpose(1, 2))
        with torch.no_grad():
            best, best_idx = sub_scores.topk(k, dim=-1)  # (2 heads, n, k), sorted
            best = best.view(heads, 2, n, k)
            first, second = _shared_candidate_pairs(k, query.device)
            candidates = best[:, 0].index_select(-1, first)
            candidates += best[:, 1].index_select(-1, second)
            top, pick = candidates.topk(k, dim=-1)  # (heads, n, k), best first
            best_idx = best_idx.view(heads, 2, n, k)
            i1 = best_idx[:, 0].gather(-1, first[pick])
            i2 = best_idx[:, 1].gather(-1, second[pick])
        slots = (i1 * n_keys + i2).transpose(0, 1).contiguous()
        if not sub_scores.requires_grad:  # no autograd graph is being recorded
            return top.transpose(0, 1).contiguous(), slots
        # The same sums, from the winners' two sub-scores in each head's (2, n, n_keys)
        # block of sub_scores, so that autograd reaches the query and the sub-keys.
        token = torch.arange(n, device=query.device)[:, None] * n_keys
        where = torch.cat([token + i1, token + i2 + n * n_keys], dim=-1)
        both = sub_scores.view(heads, 2 * n * n_keys).gather(-1, where.view(heads, -1))
        both = both.view(heads, n, 2, k)
        return (both[:, :, 0] + both[:, :, 1]).transpose(0, 1).contiguous(), slots


class MemoryUsage(NamedTuple):
    """Memory-usage statistics of Lample et al. (2019), Section 4.4.

    ``fraction_used``: share of the ``n_keys ** 2`` slots that received a non-zero total
    weight. ``kl_uniform``: KL divergence from the distribution of total read weight over
    the slots to the uniform distribution (0 = perfectly even use, ``log(n_keys ** 2)``
    = a single slot).
    """

    fraction_used: float
    kl_uniform: float


def memory_usage(indices: Tensor, weights: Tensor, n_keys: int) -> MemoryUsage:
    """Usage statistics of a product-key memory over a set of reads.

    The per-slot total weight ``z'_s = sum of the weights of the reads of slot s`` is
    normalised to a distribution ``z``; the statistics are ``#{s: z_s != 0} / N`` and
    ``KL(z || uniform) = log N + sum_s z_s log z_s`` with ``N = n_keys ** 2``.

    Args:
        indices: slots of any shape (e.g. ``(batch, seq, heads, topk)`` from
            ``ProductKeyMemory(..., return_indices=True)``); negative entries mark padding
            and are ignored.
        weights: read weights of the same shape as ``indices``.
        n_keys: the memory's ``n_keys`` (it has ``n_keys ** 2`` slots).

    Returns:
        :class:`MemoryUsage` ``(fraction_used, kl_uniform)`` as Python floats.
    """
    check_tensor(indices, "indices")
    check_tensor(weights, "weights")
    check_int(n_keys, "n_keys")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"`indices` must be an integer tensor, got dtype {indices.dtype}")
    if weights.shape != indices.shape:
        raise ValueError(
            f"`weights` must have the shape of `indices` {tuple(indices.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    size = n_keys**2
    valid = indices >= 0
    slots = indices[valid].long()
    if slots.numel() and int(slots.max()) >= size:
        raise ValueError(
            f"`indices` must be < n_keys ** 2 = {size}, got a maximum of {int(slots.max())}"
        )
    total = torch.zeros(size, dtype=torch.float64, device=indices.device)
    total.index_add_(0, slots, weights[valid].detach().to(torch.float64))
    mass = total.sum()
    if not mass > 0:
        raise ValueError("`weights`: no read with positive weight among non-padded `indices`")
    z = total / mass
    used = z > 0
    kl = math.log(size) + float((z[used] * z[used].log()).sum())
    return MemoryUsage(fraction_used=float(used.double().mean()), kl_uniform=kl)


__all__ = [
    "MemoryUsage",
    "ProductKeyMemory",
    "WeightedRowSum",
    "candidate_pairs",
    "memory_usage",
]
