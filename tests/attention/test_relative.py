"""Tests of Transformer-XL's relative attention: the shift, the encodings, the module.

References: the relative shift against a direct gather of ``R[i - j]``; the module against
a dense written-out version of the paper's score (content + u-bias + position + v-bias,
with the encoding of each pair's distance looked up one by one); a plain causal
``MultiHeadAttention`` with the same weights when the position terms vanish. Tolerance:
float64 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from attnzoo.attention import causal_tiles, relative
from attnzoo.attention.multi_head import MultiHeadAttention
from attnzoo.attention.normalizers import available_normalizers, masked_normalize
from attnzoo.attention.relative import (
    RelativeMultiHeadAttention,
    rel_shift,
    relative_distances,
    sinusoidal_relative_encoding,
)

NORMALIZERS = ["softmax", "sparsemax", "entmax15", "entmax", "hardmax"]


def assert_close(actual, expected, tol):
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


def heads(module, x):
    return x.unflatten(-1, (module.heads, module.dim_head)).transpose(1, 2)


def dense_reference(module, x, memory=None, mask=None):
    """The paper's score, one (i, j) pair at a time: no shift, no broadcasting tricks."""
    h = x if memory is None else torch.cat([memory, x], dim=1)
    n, n_k = x.shape[1], h.shape[1]
    q, k, v = (
        heads(module, module.query(x)),
        heads(module, module.key(h)),
        heads(module, module.value(h)),
    )
    u, w = module.r_w_bias[:, None], module.r_r_bias[:, None]
    scores = torch.empty(x.shape[0], module.heads, n, n_k, dtype=x.dtype)
    allowed = torch.ones(n, n_k, dtype=torch.bool)
    for i in range(n):
        for j in range(n_k):
            distance = i + n_k - n - j
            encoding = sinusoidal_relative_encoding(
                torch.tensor([distance]), module.dim, dtype=x.dtype
            )
            r = module.relative(encoding).view(module.heads, module.dim_head)  # W_r R_{i-j}
            content = ((q[:, :, i] + u[:, 0]) * k[:, :, j]).sum(-1)
            position = ((q[:, :, i] + w[:, 0]) * r).sum(-1)
            scores[:, :, i, j] = (content + position) / module.dim_head**0.5
            allowed[i, j] = distance >= 0 or not module.causal
    full = allowed if mask is None else allowed & mask
    options = {"alpha": module.fixed_alpha} if module.fixed_alpha is not None else {}
    weights = masked_normalize(scores, full, module.normalizer, **options)
    out = weights @ v
    return module.out(out.transpose(1, 2).flatten(2)), weights


class TestShift:
    @pytest.mark.parametrize("causal", [True, False])
    @pytest.mark.parametrize("n_q, n_k", [(1, 1), (1, 6), (4, 4), (3, 8), (5, 12)])
    def test_matches_a_gather_of_the_distance(self, causal, n_q, n_k):
        distances = relative_distances(n_q, n_k, causal, torch.device("cpu"))
        scores = torch.randn(2, 3, n_q, len(distances), dtype=torch.float64)
        shifted = rel_shift(scores, n_k)
        i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
        distance = i + n_k - n_q - j
        column = (distances[0] - distance).clamp(0, len(distances) - 1)  # index of R[i - j]
        expected = scores.gather(-1, column.expand(2, 3, n_q, n_k))
        defined = distance >= distances[-1]
        assert shifted.shape == (2, 3, n_q, n_k)
        assert torch.equal(shifted[..., defined], expected[..., defined])
        assert defined.all() or causal
        assert torch.isfinite(shifted).all()

    @pytest.mark.parametrize("n_q, n_k, p", [(4, 4, 4), (3, 8, 8), (5, 5, 9), (6, 2, 2), (3, 1, 1)])
    def test_gradients(self, n_q, n_k, p):
        # P = n_k makes the view overlap itself (entry (i, n_k - 1) is entry (i + 1, 0)):
        # the gradient of a shared entry is the sum over both.
        scores = torch.randn(2, n_q, p, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: rel_shift(s, n_k), (scores,))
        assert torch.autograd.gradgradcheck(lambda s: rel_shift(s, n_k), (scores,))

    def test_gradient_of_a_non_contiguous_input_matches_the_gather(self):
        n_q, n_k = 5, 7
        p = n_k + n_q - 1
        scores = torch.randn(3, p, n_q, dtype=torch.float64).transpose(-2, -1).requires_grad_()
        grad = torch.randn(3, n_q, n_k, dtype=torch.float64)
        (got,) = torch.autograd.grad(rel_shift(scores, n_k), scores, grad)
        i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
        gathered = scores.gather(-1, (j + n_q - 1 - i).expand(3, n_q, n_k))
        (expected,) = torch.autograd.grad(gathered, scores, grad)
        assert torch.equal(got, expected)

    def test_is_a_view_with_no_copy(self):
        scores = torch.randn(2, 4, 9)
        assert rel_shift(scores, 6).untyped_storage().data_ptr() == scores.data_ptr()

    def test_distances(self):
        assert relative_distances(2, 5, True, torch.device("cpu")).tolist() == [4, 3, 2, 1, 0]
        assert relative_distances(2, 5, False, torch.device("cpu")).tolist() == [4, 3, 2, 1, 0, -1]

    def test_rejects_too_few_columns(self):
        with pytest.raises(ValueError, match="`scores`"):
            rel_shift(torch.randn(3, 4), 5)
        with pytest.raises(ValueError, match="`scores`"):
            rel_shift(torch.randn(4), 2)


class TestEncoding:
    def test_values(self):
        enc = sinusoidal_relative_encoding(torch.tensor([0, 3, -2]), 4, dtype=torch.float64)
        t = torch.tensor([0.0, 3.0, -2.0], dtype=torch.float64)[:, None]
        frequencies = torch.tensor([1.0, 0.01], dtype=torch.float64)
        expected = torch.cat([(t * frequencies).sin(), (t * frequencies).cos()], dim=-1)
        assert_close(enc, expected, 1e-15)

    def test_same_encodings_as_xlnet(self):
        from attnzoo.transformers_zoo.xlnet import relative_positions

        n = 5
        expected = relative_positions(n, 8, 0, torch.device("cpu"))  # distances n .. -n + 1
        got = sinusoidal_relative_encoding(torch.arange(n, -n, -1), 8)
        assert_close(got, expected, 1e-6)

    def test_odd_dim_is_rejected(self):
        with pytest.raises(ValueError, match="`dim`"):
            sinusoidal_relative_encoding(torch.arange(3), 5)


def module(normalizer="softmax", causal=True, dim=12, heads=3):
    alpha = 1.6 if normalizer == "entmax" else None
    return RelativeMultiHeadAttention(
        dim, heads, normalizer=normalizer, alpha=alpha, causal=causal
    ).double()


class TestRelativeAttention:
    @pytest.mark.parametrize("normalizer", NORMALIZERS)
    @pytest.mark.parametrize("causal", [True, False])
    @pytest.mark.parametrize("n_mem", [0, 3])
    def test_matches_the_dense_reference(self, normalizer, causal, n_mem):
        torch.manual_seed(1)
        attention = module(normalizer, causal)
        x = torch.randn(2, 5, 12, dtype=torch.float64)
        memory = torch.randn(2, n_mem, 12, dtype=torch.float64) if n_mem else None
        out, weights = attention(x, memory=memory, return_weights=True)
        expected_out, expected_weights = dense_reference(attention, x, memory)
        tol = 1e-6 if normalizer == "entmax" else 1e-10
        assert_close(out, expected_out, tol)
        assert_close(weights, expected_weights, tol)
        assert_close(attention(x, memory=memory), expected_out, tol)  # SDPA path

    @pytest.mark.parametrize("normalizer", ["softmax", "entmax15", "entmax"])
    @pytest.mark.parametrize("n_mem", [0, 5])
    @pytest.mark.parametrize("grad", [True, False])
    def test_causal_query_tiles_match_the_dense_reference(
        self, monkeypatch, normalizer, n_mem, grad
    ):
        # Tiles of 4 queries over 11: each tile gets its own position scores, over the keys
        # up to its last query only; a padding mask is cut to them.
        monkeypatch.setattr(causal_tiles, "CAUSAL_TILE", 4)
        torch.manual_seed(3)
        attention = module(normalizer, causal=True)
        x = torch.randn(2, 11, 12, dtype=torch.float64, requires_grad=True)
        memory = torch.randn(2, n_mem, 12, dtype=torch.float64) if n_mem else None
        padding = torch.ones(2, n_mem + 11, dtype=torch.bool)
        padding[1, :3] = False
        with torch.set_grad_enabled(grad):
            out = attention(x, memory=memory, mask=padding)
        expected, _ = dense_reference(attention, x, memory, mask=padding[:, None, None, :])
        tol = 1e-6 if normalizer == "entmax" else 1e-10
        assert_close(out, expected, tol)
        if grad:
            got = torch.autograd.grad(out.square().sum(), [x, *attention.parameters()])
            want = torch.autograd.grad(expected.square().sum(), [x, *attention.parameters()])
            for a, b in zip(got, want, strict=True):
                assert_close(a, b, tol)

    def test_causal_query_tiles_score_only_the_keys_before_them(self, monkeypatch):
        monkeypatch.setattr(causal_tiles, "CAUSAL_TILE", 4)
        widths = []
        shift = relative.rel_shift

        def recording_shift(scores, n_k):
            widths.append((scores.shape[-2], n_k))
            return shift(scores, n_k)

        monkeypatch.setattr(relative, "rel_shift", recording_shift)
        attention = module()
        attention(torch.randn(1, 10, 12, dtype=torch.float64), torch.randn(1, 2, 12).double())
        assert widths == [(4, 6), (4, 10), (2, 12)]
        widths.clear()
        attention(torch.randn(1, 10, 12, dtype=torch.float64), return_weights=True)
        assert widths == [(10, 10)]  # weights over every key: one pass

    @pytest.mark.parametrize("normalizer", ["softmax", "entmax15"])
    def test_padding_mask_is_respected(self, normalizer):
        attention = module(normalizer, causal=False)
        x = torch.randn(2, 4, 12, dtype=torch.float64)
        memory = torch.randn(2, 2, 12, dtype=torch.float64)
        padding = torch.ones(2, 6, dtype=torch.bool)
        padding[1, :3] = False
        out, weights = attention(x, memory=memory, mask=padding, return_weights=True)
        assert (weights[1, ..., :3] == 0).all()
        expected, _ = dense_reference(attention, x, memory, mask=padding[:, None, None, :])
        assert_close(out, expected, 1e-10)

    def test_memory_equals_the_last_queries_of_a_full_pass(self):
        attention = module()
        sequence = torch.randn(2, 9, 12, dtype=torch.float64)
        full = attention(sequence)
        assert_close(attention(sequence[:, 6:], memory=sequence[:, :6]), full[:, 6:], 1e-10)

    def test_short_memory_equals_a_full_pass_with_a_band(self):
        """Segments of 3 with a memory of 2: query t sees keys from (segment start - 2)."""
        attention = module()
        sequence = torch.randn(1, 9, 12, dtype=torch.float64)
        outs, memory = [], None
        for start in range(0, 9, 3):
            segment = sequence[:, start : start + 3]
            outs.append(attention(segment, memory=memory))
            memory = (
                torch.cat([memory, segment], 1)[:, -2:] if memory is not None else segment[:, -2:]
            )
        positions = torch.arange(9)
        first_visible = (positions // 3) * 3 - 2
        band = positions[None, :] >= first_visible[:, None]
        expected = attention(sequence, mask=band[None, None])
        assert_close(torch.cat(outs, 1), expected, 1e-10)

    def test_without_position_terms_it_is_plain_attention(self):
        """With W_r = 0 and u = 0 only q . k is left: the same numbers as a causal MHA with
        the same weights."""
        torch.manual_seed(2)
        attention = module()
        plain = MultiHeadAttention(12, 3, causal=True).double()
        plain.load_state_dict(
            {
                k: v
                for k, v in attention.state_dict().items()
                if not k.startswith(("relative", "r_"))
            }
        )
        with torch.no_grad():
            attention.relative.weight.zero_()
            attention.r_w_bias.zero_()
        x = torch.randn(2, 7, 12, dtype=torch.float64)
        assert_close(attention(x), plain(x), 1e-10)

    def test_gradients_reach_every_parameter(self):
        attention = module()
        x = torch.randn(2, 4, 12, dtype=torch.float64, requires_grad=True)
        memory = torch.randn(2, 3, 12, dtype=torch.float64)
        attention(x, memory=memory).square().sum().backward()
        for name, parameter in attention.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(x.grad).all()

    @pytest.mark.parametrize("normalizer", available_normalizers())
    def test_every_normalizer_runs(self, normalizer):
        attention = RelativeMultiHeadAttention(8, 2, normalizer=normalizer)
        out, weights = attention(torch.randn(2, 3, 8), torch.randn(2, 2, 8), return_weights=True)
        assert out.shape == (2, 3, 8) and weights.shape == (2, 2, 3, 5)
        assert torch.isfinite(out).all()
        assert (weights[..., 0, 3:] == 0).all()  # causal: query 0 is position 2 of 5

    @pytest.mark.parametrize(
        "kwargs, error, name",
        [
            ({"x": torch.randn(3, 12)}, ValueError, "`x`"),
            ({"x": torch.randn(1, 3, 10)}, ValueError, "`x`"),
            ({"memory": torch.randn(2, 2, 12)}, ValueError, "`memory`"),
            ({"memory": torch.randn(1, 2, 8)}, ValueError, "`memory`"),
            ({"memory": torch.randn(2, 12)}, ValueError, "`memory`"),
            ({"memory": torch.randn(1, 2, 12, dtype=torch.float64)}, TypeError, "`memory`"),
            ({"mask": torch.ones(1, 5)}, TypeError, "`mask`"),
            ({"mask": torch.ones(1, 3, dtype=torch.bool)}, ValueError, "`mask`"),
        ],
    )
    def test_bad_argument_is_named(self, kwargs, error, name):
        attention = RelativeMultiHeadAttention(12, 3)
        arguments = {"x": torch.randn(1, 3, 12), "memory": torch.randn(1, 2, 12), **kwargs}
        with pytest.raises(error, match=name):
            attention(**arguments)

    def test_odd_dim_is_rejected(self):
        with pytest.raises(ValueError, match="`dim`"):
            RelativeMultiHeadAttention(9, 3)
