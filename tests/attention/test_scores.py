"""Score functions: formulas, the bounded-memory additive score, argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnzoo.attention.scores import (
    AdditiveScore,
    DotScore,
    GeneralScore,
    _ChunkedAdditive,
    additive_score,
    additive_score_naive,
    dot_score,
    make_score,
    scaled_dot_score,
)

F64 = torch.float64


def test_dot_and_scaled_dot_match_einsum() -> None:
    q, k = torch.randn(2, 3, 5, dtype=F64), torch.randn(2, 4, 5, dtype=F64)
    expected = torch.einsum("bqd,bkd->bqk", q, k)
    torch.testing.assert_close(dot_score(q, k), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(scaled_dot_score(q, k), expected / math.sqrt(5), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        scaled_dot_score(q, k, scale=0.3), 0.3 * expected, rtol=0, atol=1e-12
    )


def test_dot_score_broadcasts_leading_dimensions() -> None:
    q, k = torch.randn(2, 3, 4, 5), torch.randn(3, 6, 5)
    assert dot_score(q, k).shape == (2, 3, 4, 6)


def test_general_score_is_bilinear() -> None:
    score = GeneralScore(4, 6).double()
    q, k = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 5, 6, dtype=F64)
    w = score.weight.weight  # (query_dim, key_dim)
    expected = torch.einsum("bqi,ij,bkj->bqk", q, w, k)
    torch.testing.assert_close(score(q, k), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        score.score_projected(q, score.project_keys(k)), expected, rtol=0, atol=1e-12
    )


def _naive(score: AdditiveScore, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return additive_score_naive(score.query_proj(q), score.key_proj(k), score.v)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], weight: torch.Tensor) -> list:
    return list(torch.autograd.grad((out * weight).sum(), inputs))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 7, 15, 16, 100])
def test_chunked_additive_equals_naive_values_and_grads(chunk_size: int) -> None:
    torch.manual_seed(1)
    score = AdditiveScore(5, 7, 11, chunk_size=chunk_size).double()
    q = torch.randn(3, 5, 5, dtype=F64, requires_grad=True)
    k = torch.randn(3, 9, 7, dtype=F64, requires_grad=True)
    weight = torch.randn(3, 5, 9, dtype=F64)  # a non-trivial upstream gradient
    inputs = [q, k, *score.parameters()]

    chunked, naive = score(q, k), _naive(score, q, k)
    assert chunked.shape == (3, 5, 9)
    assert (chunked - naive).abs().max().item() <= 1e-10
    for g_chunked, g_naive in zip(
        _grads(chunked, inputs, weight), _grads(naive, inputs, weight), strict=True
    ):
        assert (g_chunked - g_naive).abs().max().item() <= 1e-10


def test_chunked_additive_broadcast_and_one_step_queries() -> None:
    score = AdditiveScore(4, 6, 8, chunk_size=3).double()
    q = torch.randn(2, 3, 1, 4, dtype=F64)  # leading (2, 3) against keys' (3,)
    k = torch.randn(3, 5, 6, dtype=F64)
    out = score(q, k)
    assert out.shape == (2, 3, 1, 5)
    assert (out - _naive(score, q, k)).abs().max().item() <= 1e-12


def test_chunked_additive_function_gradcheck() -> None:
    qp = torch.randn(7, 4, dtype=F64, requires_grad=True)
    kp = torch.randn(3, 5, 4, dtype=F64, requires_grad=True)
    v = torch.randn(4, dtype=F64, requires_grad=True)
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    for chunk in (1, 3, 8):
        assert torch.autograd.gradcheck(
            lambda a, b, c, chunk=chunk: _ChunkedAdditive.apply(a, b, c, group, chunk),
            (qp, kp, v),
        )


def test_functional_additive_score() -> None:
    qp, kp = torch.randn(2, 3, 5, dtype=F64), torch.randn(2, 4, 5, dtype=F64)
    v = torch.randn(5, dtype=F64)
    out = additive_score(qp, kp, v, chunk_size=2)
    assert (out - additive_score_naive(qp, kp, v)).abs().max().item() <= 1e-12
    with pytest.raises(ValueError, match="`v`"):
        additive_score(qp, kp, torch.randn(4, dtype=F64))
    with pytest.raises(ValueError, match="projected_keys"):
        additive_score(qp, kp[..., :4], v)
    with pytest.raises(ValueError, match="chunk_size"):
        additive_score(qp, kp, v, chunk_size=0)


def test_precomputed_keys_give_the_same_scores() -> None:
    score = AdditiveScore(4, 6, 8).double()
    q, k = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 5, 6, dtype=F64)
    torch.testing.assert_close(score.score_projected(q, score.project_keys(k)), score(q, k))


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_additive_memory_is_bounded_in_forward_and_backward() -> None:
    batch, n_q, n_k, hidden, chunk = 4, 32, 10, 16, 2
    score = AdditiveScore(3, 3, hidden, chunk_size=chunk)
    q = torch.randn(batch, n_q, 3, requires_grad=True)
    k = torch.randn(batch, n_k, 3, requires_grad=True)
    full = batch * n_q * n_k * hidden
    # Everything the computation needs besides the tiles: inputs, projections, scores.
    io = max(batch * n_q * max(hidden, n_k), batch * n_k * hidden)
    bound = max(chunk * n_k * hidden, io)
    assert bound * 8 <= full

    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        out = score(q, k)
    assert max(saved) <= io

    with _LargestTensor() as mode:
        out = score(q, k)
        out.sum().backward()
    assert mode.largest <= bound

    # The check can fail: the naive formula creates the full tensor.
    with _LargestTensor() as mode:
        _naive(score, q, k).sum().backward()
    assert mode.largest >= full


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_additive_low_precision_close_to_float32(dtype: torch.dtype) -> None:
    score = AdditiveScore(4, 6, 8, chunk_size=3)
    q, k = torch.randn(2, 5, 4), torch.randn(2, 7, 6)
    reference = score(q, k)
    low = score.to(dtype)
    q_low = q.to(dtype).requires_grad_()
    out = low(q_low, k.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference, rtol=0, atol=0.05)
    out.sum().backward()
    assert q_low.grad is not None and torch.isfinite(q_low.grad.float()).all()


def test_make_score_builds_each_name() -> None:
    assert isinstance(make_score("dot", 4, 4), DotScore)
    assert make_score("scaled_dot", 4, 4).scale == pytest.approx(0.5)
    assert isinstance(make_score("general", 4, 6), GeneralScore)
    additive = make_score("concat", 4, 6)
    assert isinstance(additive, AdditiveScore) and additive.hidden_dim == 4
    assert make_score("additive", 4, 6, hidden_dim=9).hidden_dim == 9


@pytest.mark.parametrize(
    ("build", "exc", "match"),
    [
        (lambda: make_score("cosine", 4, 4), ValueError, "score"),
        (lambda: make_score("dot", 4, 5), ValueError, "query_dim"),
        (lambda: AdditiveScore(4, 4, 8, chunk_size=0), ValueError, "chunk_size"),
        (lambda: AdditiveScore(4, 4, 8, chunk_size=-3), ValueError, "chunk_size"),
        (lambda: AdditiveScore(4, 4, 8, chunk_size=2.5), TypeError, "chunk_size"),
        (lambda: AdditiveScore(4, 4, 0), ValueError, "hidden_dim"),
        (lambda: GeneralScore(0, 4), ValueError, "query_dim"),
        (
            lambda: scaled_dot_score(torch.randn(2, 3), torch.randn(2, 3), scale=0.0),
            ValueError,
            "scale",
        ),
    ],
)
def test_bad_construction_is_rejected(build, exc, match) -> None:
    with pytest.raises(exc, match=match):
        build()


@pytest.mark.parametrize(
    ("query", "keys", "exc", "match"),
    [
        (torch.randn(5), torch.randn(3, 4), ValueError, "query"),
        (torch.randn(2, 4), torch.randn(4), ValueError, "keys"),
        (torch.randn(2, 5), torch.randn(3, 6), ValueError, "query_dim"),
        (torch.randn(2, 4), torch.randn(3, 5), ValueError, "key_dim"),
        (torch.randn(2, 3, 4), torch.randn(5, 3, 6), ValueError, "leading dimensions"),
        ([[1.0] * 4], torch.randn(3, 6), TypeError, "query"),
    ],
)
def test_bad_inputs_name_the_argument(query, keys, exc, match) -> None:
    with pytest.raises(exc, match=match):
        AdditiveScore(4, 6, 8)(query, keys)


def test_dot_score_feature_mismatch() -> None:
    with pytest.raises(ValueError, match="keys"):
        dot_score(torch.randn(2, 4), torch.randn(3, 5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
class TestCuda:
    def test_chunked_additive_matches_naive_on_cuda(self) -> None:
        score = AdditiveScore(5, 7, 11, chunk_size=3).double().cuda()
        q = torch.randn(3, 5, 5, dtype=F64, device="cuda", requires_grad=True)
        k = torch.randn(3, 9, 7, dtype=F64, device="cuda", requires_grad=True)
        chunked, naive = score(q, k), _naive(score, q, k)
        assert chunked.device.type == "cuda"
        assert (chunked - naive).abs().max().item() <= 1e-10
        g1 = torch.autograd.grad(chunked.sum(), (q, k))
        g2 = torch.autograd.grad(naive.sum(), (q, k))
        for a, b in zip(g1, g2, strict=True):
            assert (a - b).abs().max().item() <= 1e-10

    def test_additive_half_on_cuda(self) -> None:
        score = AdditiveScore(4, 6, 8).cuda().half()
        out = score(
            torch.randn(2, 3, 4, device="cuda").half(), torch.randn(2, 5, 6, device="cuda").half()
        )
        assert out.dtype == torch.float16 and torch.isfinite(out).all()
