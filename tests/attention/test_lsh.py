"""LSH attention against dense shared-QK attention over the key set it is meant to see.

The reference builds that key set by brute force (sort each round by (bucket, position),
cut into chunks, a query sees its chunk and the one before), then runs dense softmax
attention over the union of the rounds with the self rule. Tolerance: 1e-10 in float64.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from attnzoo.attention import lsh
from attnzoo.attention.lsh import (
    LSHAttention,
    lsh_allowed_mask,
    lsh_attention,
    lsh_buckets,
    random_rotations,
)
from attnzoo.attention.normalizers import masked_normalize

TOL = 1e-10


def inputs(batch=2, heads=3, n=23, d=8, d_v=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(batch, heads, n, d, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, n, d_v, generator=g, dtype=dtype)
    return qk, v


def padding_mask(batch, n, seed=0, p=0.25):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, generator=g) >= p


def brute_force_allowed(buckets, chunk_length, causal, across, mask):
    """The keys (other than itself) each query sees in some round, by explicit loops."""
    b, h, r, n = buckets.shape
    allowed = torch.zeros(b, h, n, n, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for ri in range(r):
                bucket = buckets[bi, hi, ri].tolist()
                order = sorted(range(n), key=lambda p: (bucket[p], p))
                chunk = {p: slot // chunk_length for slot, p in enumerate(order)}
                for i in range(n):
                    for j in range(n):
                        visible = chunk[i] - chunk[j] in (0, 1)
                        same = across or bucket[i] == bucket[j]
                        if i != j and visible and same and (j <= i or not causal):
                            allowed[bi, hi, i, j] = True
    if mask is not None:
        allowed &= mask[:, None, None, :]
    return allowed


def dense_shared_qk(qk, v, allowed, mask):
    """Softmax over ``allowed``; a query seeing nothing else attends to itself (if real)."""
    keys = F.normalize(qk, dim=-1)
    scores = qk @ keys.transpose(-2, -1) * qk.shape[-1] ** -0.5
    n = qk.shape[2]
    self_only = torch.eye(n, dtype=torch.bool)
    if mask is not None:
        self_only = self_only & mask[:, None, :, None]
    allowed = torch.where(allowed.any(-1, keepdim=True), allowed, self_only)
    return masked_normalize(scores, allowed) @ v


class TestDenseEquality:
    @pytest.mark.parametrize("n_hashes", [1, 2, 4])
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("chunk_length", [23, 64])
    def test_one_chunk_is_dense_shared_qk_attention(self, n_hashes, causal, chunk_length):
        qk, v = inputs()
        mask = padding_mask(2, 23)
        out = lsh_attention(
            qk,
            v,
            n_buckets=6,
            n_hashes=n_hashes,
            chunk_length=chunk_length,
            causal=causal,
            mask=mask,
        )
        n = 23
        allowed = ~torch.eye(n, dtype=torch.bool) & mask[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
        ref = dense_shared_qk(qk, v, allowed, mask)
        assert (out - ref).abs().max() < TOL

    @pytest.mark.parametrize("n_hashes", [1, 3])
    @pytest.mark.parametrize("chunk_length", [1, 4, 5])
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("across", [True, False])
    def test_chunked_rounds_equal_dense_over_the_union(
        self, n_hashes, chunk_length, causal, across
    ):
        qk, v = inputs(batch=2, heads=2, n=17)
        mask = padding_mask(2, 17, seed=1)
        rotations = random_rotations(2, 8, 4, n_hashes, dtype=torch.float64)
        out = lsh_attention(
            qk,
            v,
            n_buckets=4,
            n_hashes=n_hashes,
            chunk_length=chunk_length,
            causal=causal,
            mask=mask,
            attend_across_buckets=across,
            rotations=rotations,
        )
        buckets = lsh_buckets(qk, rotations)
        allowed = brute_force_allowed(buckets, chunk_length, causal, across, mask)
        fast_mask = lsh_allowed_mask(
            buckets, chunk_length, causal=causal, attend_across_buckets=across, mask=mask
        )
        assert torch.equal(fast_mask, allowed)
        assert (out - dense_shared_qk(qk, v, allowed, mask)).abs().max() < TOL

    def test_more_rounds_see_more_keys(self):
        qk, _ = inputs(batch=1, heads=1, n=64)
        rotations = random_rotations(1, 8, 8, 4, generator=torch.Generator().manual_seed(0))
        seen = [
            lsh_allowed_mask(lsh_buckets(qk, rotations[:, :r].double()), 8).sum().item()
            for r in (1, 2, 4)
        ]
        assert seen[0] < seen[1] < seen[2] < 64 * 63


class TestHashing:
    def test_bucket_is_argmax_of_rotation_and_its_negation(self):
        x = torch.tensor([[[[1.0, 0.2], [-2.0, 0.1], [0.1, 3.0], [0.3, -4.0]]]])
        rotations = torch.eye(2).view(1, 1, 2, 2)  # n_buckets = 4: [x0, x1, -x0, -x1]
        assert lsh_buckets(x, rotations).tolist() == [[[[0, 2, 1, 3]]]]

    def test_deterministic_given_a_generator(self):
        qk, v = inputs()
        options = {"n_buckets": 4, "n_hashes": 2, "chunk_length": 4}
        a = lsh_attention(qk, v, generator=torch.Generator().manual_seed(3), **options)
        b = lsh_attention(qk, v, generator=torch.Generator().manual_seed(3), **options)
        c = lsh_attention(qk, v, generator=torch.Generator().manual_seed(4), **options)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)

    def test_module_seed_fixes_the_hashing(self):
        module = LSHAttention(16, 2, n_buckets=4, chunk_length=4, seed=7).double()
        x = torch.randn(2, 13, 16, dtype=torch.float64)
        assert torch.equal(module(x), module(x))
        assert "rotations" not in module.state_dict()
        unseeded = LSHAttention(16, 2, n_buckets=4, chunk_length=4).double()
        unseeded.load_state_dict(module.state_dict())
        torch.manual_seed(1)
        first = unseeded(x)
        torch.manual_seed(1)
        assert torch.equal(first, unseeded(x))  # reproducible from the global seed
        assert not torch.allclose(first, unseeded(x))  # fresh rotations at every call


class TestMasksAndRules:
    def test_padded_and_future_values_are_never_read(self):
        qk, v = inputs(n=19)
        mask = padding_mask(2, 19, seed=2)
        rotations = random_rotations(3, 8, 4, 2, dtype=torch.float64)
        options = {"n_buckets": 4, "n_hashes": 2, "chunk_length": 3, "rotations": rotations}
        out = lsh_attention(qk, v, mask=mask, causal=True, **options)
        # Values only (the hashing depends on qk): change the padded keys' values and
        # position 18's: the real positions before 18 must not move.
        changed = v.clone()
        changed.masked_fill_(~mask[:, None, :, None], 100.0)
        changed[:, :, 18] += 100.0
        again = lsh_attention(qk, changed, mask=mask, causal=True, **options)
        keep = mask.clone()
        keep[:, 18] = False
        assert (out - again).abs().amax(dim=(1, 3))[keep].max() < TOL

    def test_self_only_when_nothing_else(self):
        qk, v = inputs(batch=1, heads=1, n=5)
        out = lsh_attention(qk, v, n_buckets=2, chunk_length=8, causal=True)
        # Position 0 sees only itself; position 1 sees position 0 but not itself.
        assert torch.allclose(out[0, 0, 0], v[0, 0, 0])
        assert torch.allclose(out[0, 0, 1], v[0, 0, 0])

    def test_fully_padded_row_gives_zeros_and_finite_gradients(self):
        qk, v = (x.requires_grad_(True) for x in inputs(n=9))
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1] = False
        out = lsh_attention(qk, v, n_buckets=4, n_hashes=3, chunk_length=2, mask=mask)
        assert (out[1] == 0).all() and torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(qk.grad).all() and torch.isfinite(v.grad).all()
        assert (v.grad[1] == 0).all()

    def test_gradcheck(self):
        qk, v = (x.requires_grad_(True) for x in inputs(batch=1, heads=2, n=7, d=3, d_v=2))
        rotations = random_rotations(2, 3, 4, 2, dtype=torch.float64)
        mask = padding_mask(1, 7, seed=4)

        def fn(qk, v):
            return lsh_attention(
                qk, v, n_buckets=4, n_hashes=2, chunk_length=2, mask=mask, rotations=rotations
            )

        assert torch.autograd.gradcheck(fn, (qk, v))

    def test_dropout_only_in_training(self):
        qk, v = inputs()
        options = {"n_buckets": 4, "chunk_length": 4, "generator": None}
        torch.manual_seed(0)
        a = lsh_attention(qk, v, dropout=0.5, training=False, **options)
        torch.manual_seed(0)
        b = lsh_attention(qk, v, **options)
        assert torch.equal(a, b)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision_close_to_float32(self, dtype):
        qk, v = inputs(dtype=torch.float32)
        rotations = random_rotations(3, 8, 4, 2)
        options = {"n_buckets": 4, "n_hashes": 2, "chunk_length": 4, "rotations": rotations}
        ref = lsh_attention(qk, v, **options)
        low = lsh_attention(qk.to(dtype), v.to(dtype), **options)
        assert low.dtype == dtype
        # Rounding can move a vector across a bucket boundary; most positions agree.
        close = (low.float() - ref).abs().amax(-1) < 3e-2
        assert close.float().mean() > 0.9


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in torch.utils._pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def test_memory_is_linear_in_n_for_a_fixed_chunk():
    n, m, d = 1024, 32, 4
    qk, v = (x.float().requires_grad_(True) for x in inputs(batch=1, heads=1, n=n, d=d, d_v=d))
    with _LargestTensor() as spy:
        out = lsh_attention(qk, v, n_buckets=32, chunk_length=m)
        out.sum().backward()
    # The scores, n / m chunks of m x 2m, and the gathered keys, n / m chunks of 2m x d.
    assert spy.largest <= max(n * 2 * m, 2 * n * d)
    assert spy.largest < n * n


@pytest.mark.parametrize("across", [True, False])
def test_round_counts_are_the_rounds_whose_window_holds_the_pair(across):
    """N_ij by explicit loops, against the kernel's count on narrow and on wide integers."""
    g = torch.Generator().manual_seed(5)
    rounds, n, m = 3, 20, 4
    buckets = torch.randint(0, 4, (1, 2, rounds, n), generator=g)
    positions = torch.arange(n)
    rank = (buckets * n + positions).argsort(-1).argsort(-1)  # position -> sorted slot
    chunk = rank // m
    q_pos = (buckets * n + positions).argsort(-1).unflatten(-1, (n // m, m))
    k_pos = lsh._with_previous_chunk(q_pos, fill=-1)
    expected = torch.zeros(q_pos.shape + k_pos.shape[-1:])
    for b, h, r, c, a, e in itertools.product(*(range(size) for size in expected.shape)):
        i, j = int(q_pos[b, h, r, c, a]), int(k_pos[b, h, r, c, e])
        if j < 0:  # before the first chunk: no key, never allowed, so not compared
            continue
        offset = chunk[b, h, :, i] - chunk[b, h, :, j]  # over the rounds
        in_window = (offset == 0) | (offset == 1)
        if not across:
            in_window &= buckets[b, h, :, i] == buckets[b, h, :, j]
        expected[b, h, r, c, a, e] = max(1, int(in_window.sum()))
    for n_chunks in (n // m, 2**15):  # int16 chunk ids, then int32
        got = lsh._round_counts(q_pos, k_pos, chunk, n_chunks, buckets, across, torch.float64)
        real = (k_pos >= 0).unsqueeze(-2).expand_as(got)
        assert got.dtype == torch.float64 and torch.equal(got[real], expected.double()[real])


class TestModule:
    def test_one_chunk_equals_dense_attention_on_the_same_weights(self):
        module = LSHAttention(16, 2, n_buckets=4, n_hashes=2, chunk_length=32).double()
        x = torch.randn(2, 11, 16, dtype=torch.float64)
        mask = padding_mask(2, 11)
        qk = module.query_key(x).view(2, 11, 2, 8).transpose(1, 2)
        v = module.value(x).view(2, 11, 2, 8).transpose(1, 2)
        allowed = ~torch.eye(11, dtype=torch.bool) & mask[:, None, None, :]
        ref = dense_shared_qk(qk, v, allowed, mask).transpose(1, 2).reshape(2, 11, 16)
        assert (module(x, mask=mask) - module.out(ref)).abs().max() < TOL

    def test_repr_and_shapes(self):
        module = LSHAttention(8, 2, n_buckets=2, chunk_length=3, causal=True)
        assert module(torch.randn(3, 10, 8)).shape == (3, 10, 8)
        assert "n_buckets=2" in repr(module)


class TestErrors:
    def test_bad_arguments(self):
        qk, v = inputs()
        with pytest.raises(ValueError, match="`n_buckets` must be an even int"):
            lsh_attention(qk, v, n_buckets=3)
        with pytest.raises(ValueError, match="`n_buckets`"):
            lsh_attention(qk, v, n_buckets=0)
        with pytest.raises(ValueError, match="`chunk_length`"):
            lsh_attention(qk, v, n_buckets=2, chunk_length=0)
        with pytest.raises(ValueError, match="`rotations` must have shape"):
            lsh_attention(qk, v, n_buckets=4, rotations=torch.randn(3, 1, 8, 3))
        with pytest.raises(TypeError, match="`mask` must be a boolean"):
            lsh_attention(qk, v, n_buckets=2, mask=torch.ones(2, 23))
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, n\)"):
            lsh_attention(qk, v, n_buckets=2, mask=torch.ones(2, 22, dtype=torch.bool))
        with pytest.raises(ValueError, match="`v` must have the"):
            lsh_attention(qk, v[:, :, :5], n_buckets=2)
        with pytest.raises(TypeError, match="`causal`"):
            lsh_attention(qk, v, n_buckets=2, causal=None)
        with pytest.raises(ValueError, match="`n_buckets`"):
            LSHAttention(8, 2, n_buckets=5)


def test_more_hash_rounds_approximate_full_attention_better():
    """Kitaev et al. 2020 (Table 2): more hashing rounds bring LSH attention closer to full
    attention. Clustered vectors with peaked attention, no training; four hash seeds each
    show a strictly falling error (seeds 0-3 all hold, the ratio is ~5x, not a coin flip)."""
    g = torch.Generator().manual_seed(0)
    n, d, clusters = 512, 16, 32
    centers = F.normalize(torch.randn(clusters, d, generator=g), dim=-1)
    members = centers[torch.randint(0, clusters, (n,), generator=g)]
    qk = ((members + 0.1 * torch.randn(n, d, generator=g)) * 12).view(1, 1, n, d).double()
    v = torch.randn(1, 1, n, d, generator=g, dtype=torch.float64)
    dense = dense_shared_qk(qk, v, ~torch.eye(n, dtype=torch.bool), None)
    for seed in range(4):
        errors = []
        for rounds in (1, 2, 4, 8):
            out = lsh_attention(
                qk,
                v,
                n_buckets=16,
                n_hashes=rounds,
                chunk_length=32,
                generator=torch.Generator().manual_seed(seed),
            )
            errors.append(((out - dense).norm() / dense.norm()).item())
        assert errors == sorted(errors, reverse=True) and len(set(errors)) == 4, errors
        assert errors[-1] < errors[0] / 3, errors
