"""Luong local attention computed on its window only, against the full-source formulation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attnzoo.attention.normalizers import masked_normalize
from attnzoo.attention.rnn_attention import LocalAttention, LocalWindow

F64 = torch.float64
ATOL = 1e-12


def full_source_local_attention(
    attn: LocalAttention,
    query: Tensor,
    keys: Tensor,
    mask: Tensor | None = None,
    projected_keys: Tensor | None = None,
    step: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference: score every source position, then mask those outside ``|s - p_t| <= D``.

    Exact but ``O(n_k)`` per query. ``query`` is ``(batch, n_q, query_dim)``; ``step`` is
    local-m's ``t`` as ``(batch, n_q)`` int64 (default ``0 .. n_q - 1``). Returns context
    ``(batch, n_q, key_dim)``, weights ``(batch, n_q, n_k)`` and ``p_t`` ``(batch, n_q)``.
    """
    batch, n_q, _ = query.shape
    n_k = keys.shape[1]
    if projected_keys is None:
        projected_keys = attn.score.project_keys(keys)
    scores = attn.score.score_projected(query, projected_keys)
    lengths = torch.full((batch,), n_k) if mask is None else mask.sum(dim=-1)
    pos_dtype = torch.promote_types(scores.dtype, torch.float32)
    if attn.mode == "local-p":
        p = attn.predict_position(query, lengths).to(pos_dtype)
    else:
        t = torch.arange(n_q).expand(batch, n_q) if step is None else step
        p = torch.minimum(t, (lengths[:, None] - 1).clamp_min(0)).clamp_min(0).to(pos_dtype)
    s = torch.arange(n_k, dtype=pos_dtype)
    distance = s - p[..., None]
    allowed = distance.detach().abs() <= attn.window
    if mask is not None:
        allowed = allowed & mask[:, None, :]
    weights = masked_normalize(scores, allowed, attn.normalize)
    if attn.gaussian and attn.window > 0:
        sigma = attn.window / 2
        weights = weights * torch.exp(-distance.square() / (2 * sigma**2)).to(weights.dtype)
    if mask is not None:
        keys = keys.masked_fill(~mask[..., None], 0.0)
    return weights @ keys, weights, p


# Odd sizes; real lengths 11, 6, 1 and 0 (an empty source row).
BATCH, N_Q, N_K, DIM = 4, 5, 11, 5
LENGTHS = torch.tensor([N_K, 6, 1, 0])


def _build(mode: str, score: str, window: int, **options) -> LocalAttention:
    torch.manual_seed(0)
    attn = LocalAttention(DIM, DIM, window=window, mode=mode, score=score, **options).double()
    if mode == "local-p":
        with torch.no_grad():  # spread p_t over the whole source, edges included
            attn.position_v.weight.mul_(8)
    return attn


def _inputs() -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(1)
    query = 2 * torch.randn(BATCH, N_Q, DIM, dtype=F64, requires_grad=True)
    keys = torch.randn(BATCH, N_K, DIM, dtype=F64, requires_grad=True)
    mask = torch.arange(N_K)[None, :] < LENGTHS[:, None]
    return query, keys, mask


def _grads(loss: Tensor, attn: LocalAttention, *inputs: Tensor) -> list[Tensor | None]:
    leaves = [*inputs, *attn.parameters()]
    # The cached key projection is shared by both sides: keep its graph for the second.
    return list(torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True))


def _assert_same_grads(ours: list[Tensor | None], reference: list[Tensor | None]) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        if a is None or b is None:  # unused on both sides, or zero where the other is unused
            other = b if a is None else a
            assert other is None or (other == 0).all()
            continue
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def _force_path(monkeypatch: pytest.MonkeyPatch, attn: LocalAttention, gather: bool) -> None:
    """Take the window's scores from gathered keys, or from one product over the source."""
    monkeypatch.setattr(attn, "_gathers_keys", lambda n_q, n_k, width: gather)


@pytest.mark.parametrize("gather", [True, False], ids=["gathered-keys", "source-product"])
@pytest.mark.parametrize("steps", ["multi", "single", "cached"])
@pytest.mark.parametrize("window", [1, 3, 12])  # 12: the window is wider than the source
@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("mode", ["local-m", "local-p"])
def test_window_matches_full_source_values_and_gradients(
    mode: str, score: str, window: int, steps: str, gather: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    attn = _build(mode, score, window)
    _force_path(monkeypatch, attn, gather)
    query, keys, mask = _inputs()
    # local-m steps run past the real lengths (clamped) and hit both edges of the source.
    step = torch.tensor([[0, 10, 3, 7, 2], [5, 0, 9, 1, 4], [0, 3, 1, 2, 6], [1, 0, 2, 3, 4]])
    if steps == "single":
        query_in, step_in = query[:, 2], step[:, 2]
        ref_query, ref_step = query[:, 2:3], step[:, 2:3]
    else:
        query_in, step_in, ref_query, ref_step = query, step, query, step
    cache = attn.precompute(keys) if steps == "cached" else None
    position = step_in if mode == "local-m" else None

    window_out = attn.attend_window(query_in, keys, mask, projected_keys=cache, position=position)
    context, weights = attn(query_in, keys, mask, projected_keys=cache, position=position)
    ref_context, ref_weights, ref_p = full_source_local_attention(
        attn, ref_query, keys, mask, projected_keys=cache, step=ref_step
    )
    if steps == "single":
        ref_context, ref_weights, ref_p = (x.squeeze(1) for x in (ref_context, ref_weights, ref_p))

    torch.testing.assert_close(context, ref_context, rtol=0, atol=ATOL)
    torch.testing.assert_close(weights, ref_weights, rtol=0, atol=ATOL)
    torch.testing.assert_close(window_out.context, ref_context, rtol=0, atol=ATOL)
    torch.testing.assert_close(window_out.position, ref_p, rtol=0, atol=ATOL)
    if mode == "local-p" and steps != "single":
        assert ref_p.min() < 0.5 and ref_p[0].max() > N_K - 1.5  # both edges are visited

    torch.manual_seed(2)
    grad_context, grad_weights = torch.randn_like(context), torch.randn_like(weights)

    def loss(c: Tensor, w: Tensor) -> Tensor:
        return (c * grad_context).sum() + (w * grad_weights).sum()

    ours = _grads(loss(window_out.context, window_out.dense_weights()), attn, query, keys)
    reference = _grads(loss(ref_context, ref_weights), attn, query, keys)
    _assert_same_grads(ours, reference)
    if mode == "local-p" and steps != "single":  # the gradient reaching p_t (Gaussian)
        (ours_p,) = torch.autograd.grad(
            loss(window_out.context, window_out.dense_weights()), window_out.position
        )
        (ref_grad_p,) = torch.autograd.grad(loss(ref_context, ref_weights), ref_p)
        assert ours_p.abs().max() > 0
        torch.testing.assert_close(ours_p, ref_grad_p, rtol=0, atol=ATOL)


@pytest.mark.parametrize("gather", [True, False], ids=["gathered-keys", "source-product"])
@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15"])
@pytest.mark.parametrize(
    ("mode", "gaussian"), [("local-m", None), ("local-m", True), ("local-p", False)]
)
def test_window_matches_full_source_with_other_normalizers_and_gaussian_choices(
    mode: str, gaussian: bool | None, normalizer: str, gather: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    attn = _build(mode, "general", 2, gaussian=gaussian, normalizer=normalizer)
    _force_path(monkeypatch, attn, gather)
    query, keys, mask = _inputs()
    context, weights = attn(3 * query, keys, mask)
    ref_context, ref_weights, _ = full_source_local_attention(attn, 3 * query, keys, mask)
    torch.testing.assert_close(context, ref_context, rtol=0, atol=1e-10)
    torch.testing.assert_close(weights, ref_weights, rtol=0, atol=1e-10)
    grad = torch.randn_like(context)
    ours = _grads((context * grad).sum() + weights.square().sum(), attn, query, keys)
    reference = _grads((ref_context * grad).sum() + ref_weights.square().sum(), attn, query, keys)
    for a, b in zip(ours, reference, strict=True):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_window_holds_every_position_within_d_of_a_fractional_position() -> None:
    attn = _build("local-p", "dot", 3)
    query, keys, _ = _inputs()
    query = 3 * torch.randn(BATCH, 200, DIM, dtype=F64)  # many real-valued p_t
    out = attn.attend_window(query, keys)
    assert isinstance(out, LocalWindow)
    assert out.index.shape == (BATCH, 200, 7) and out.weights.shape == (BATCH, 200, 7)
    assert (out.index.diff(dim=-1) == 1).all()  # distinct and increasing
    assert out.index.min() >= 0 and out.index.max() <= N_K - 1
    s = torch.arange(N_K, dtype=F64)
    within = (s - out.position[..., None]).abs() <= 3  # (batch, n_q, n_k)
    gathered = torch.zeros_like(within).scatter(-1, out.index, True)
    assert not (within & ~gathered).any()
    assert (out.position % 1 != 0).all()  # truly fractional positions were exercised


def test_step_reads_only_its_window() -> None:
    """A one-step query never touches keys outside its window: NaN there stays out."""
    n_k, window, t = 301, 4, 150
    attn = LocalAttention(DIM, DIM, window=window, mode="local-m", score="general").double()
    keys = torch.randn(2, n_k, DIM, dtype=F64)
    keys[:, : t - window] = float("nan")
    keys[:, t + window + 1 :] = float("nan")
    query = torch.randn(2, DIM, dtype=F64)
    context, weights = attn(query, keys, position=t)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    clean = keys.nan_to_num(0.0)
    ref_context, ref_weights, _ = full_source_local_attention(
        attn, query[:, None], clean, step=torch.full((2, 1), t)
    )
    torch.testing.assert_close(context, ref_context[:, 0], rtol=0, atol=ATOL)
    torch.testing.assert_close(weights, ref_weights[:, 0], rtol=0, atol=ATOL)


def test_scores_are_computed_on_the_window_only(monkeypatch: pytest.MonkeyPatch) -> None:
    attn = LocalAttention(DIM, DIM, window=8, mode="local-p", score="concat")
    shapes: list[tuple[int, ...]] = []
    score_projected = attn.score.score_projected

    def spy(query: Tensor, projected: Tensor) -> Tensor:
        shapes.append(tuple(projected.shape))
        return score_projected(query, projected)

    monkeypatch.setattr(attn.score, "score_projected", spy)
    keys = torch.randn(3, 2048, DIM)
    attn(torch.randn(3, DIM), keys, projected_keys=attn.precompute(keys))
    assert shapes == [(3, 1, 17, DIM)]  # 2D + 1 keys per step, not 2048


def test_a_step_gathers_and_many_queries_over_a_short_source_share_one_product() -> None:
    general = LocalAttention(DIM, DIM, window=8, mode="local-m", score="general")
    assert general._gathers_keys(n_q=1, n_k=2048, width=17)
    assert general._gathers_keys(n_q=1, n_k=20, width=17)
    assert general._gathers_keys(n_q=64, n_k=2048, width=17)
    assert not general._gathers_keys(n_q=40, n_k=40, width=17)
    concat = LocalAttention(DIM, DIM, window=8, mode="local-m", score="concat")
    assert concat._gathers_keys(n_q=40, n_k=40, width=17)


def test_positions_past_2048_in_float16() -> None:
    attn = LocalAttention(DIM, DIM, window=2, mode="local-m", score="dot").half()
    keys = torch.randn(1, 2101, DIM).half()
    _, weights = attn(torch.randn(1, DIM).half(), keys, position=2089)
    assert weights.shape == (1, 2101)
    assert weights[0].nonzero().flatten().tolist() == [2087, 2088, 2089, 2090, 2091]


def test_empty_source_is_rejected() -> None:
    attn = LocalAttention(DIM, DIM, window=2, mode="local-m")
    with pytest.raises(ValueError, match="keys"):
        attn(torch.randn(2, 3, DIM), torch.randn(2, 0, DIM))
