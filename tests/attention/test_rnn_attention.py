"""Bahdanau, Luong global and local attention: formulas, masks, windows, errors, a toy task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnzoo.attention.rnn_attention import (
    AttentionalHidden,
    BahdanauAttention,
    LocalAttention,
    LuongAttention,
)

F64 = torch.float64
ATOL = 1e-12


def _memory(batch: int = 3, n_k: int = 7, key_dim: int = 6, dtype=F64):
    """Keys and a padding mask with real lengths n_k, 4 and 2."""
    keys = torch.randn(batch, n_k, key_dim, dtype=dtype)
    lengths = torch.tensor([n_k, 4, 2][:batch])
    mask = torch.arange(n_k)[None, :] < lengths[:, None]
    return keys, mask


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


# --- global attention: formulas ---------------------------------------------------------


def test_bahdanau_matches_hand_formula() -> None:
    attn = BahdanauAttention(4, 6, 5, chunk_size=2).double()
    keys, mask = _memory()
    query = torch.randn(3, 4, dtype=F64)
    s = attn.score
    hidden = torch.tanh(
        s.query_proj.weight @ query[:, :, None]  # (batch, hidden, 1)
        + (keys @ s.key_proj.weight.T + s.key_proj.bias).transpose(1, 2)
    )  # (batch, hidden, n_k)
    scores = torch.einsum("h,bhk->bk", s.v, hidden)
    weights = _masked_softmax(scores, mask)
    context, w = attn(query, keys, mask)
    torch.testing.assert_close(w, weights, rtol=0, atol=ATOL)
    torch.testing.assert_close(
        context, torch.einsum("bk,bkd->bd", weights, keys), rtol=0, atol=ATOL
    )


def test_bahdanau_precompute_and_multi_step_queries_agree() -> None:
    attn = BahdanauAttention(4, 6, 5).double()
    keys, mask = _memory()
    queries = torch.randn(3, 5, 4, dtype=F64)
    context, weights = attn(queries, keys, mask)
    assert context.shape == (3, 5, 6) and weights.shape == (3, 5, 7)
    cache = attn.precompute(keys)
    assert cache.shape == (3, 7, 5)
    for t in range(5):  # a decoder loop against the cached projection
        c_t, w_t = attn(queries[:, t], keys, mask, projected_keys=cache)
        torch.testing.assert_close(c_t, context[:, t], rtol=0, atol=ATOL)
        torch.testing.assert_close(w_t, weights[:, t], rtol=0, atol=ATOL)


def test_luong_dot_matches_hand_formula() -> None:
    attn = LuongAttention(6, 6, score="dot").double()
    keys, mask = _memory()
    query = torch.randn(3, 2, 6, dtype=F64)
    weights = _masked_softmax(query @ keys.transpose(1, 2), mask[:, None])
    context, w = attn(query, keys, mask)
    torch.testing.assert_close(w, weights, rtol=0, atol=ATOL)
    torch.testing.assert_close(context, weights @ keys, rtol=0, atol=ATOL)


def test_luong_general_matches_hand_formula() -> None:
    attn = LuongAttention(4, 6, score="general").double()
    keys, mask = _memory()
    query = torch.randn(3, 2, 4, dtype=F64)
    w_a = attn.score.weight.weight  # (query_dim, key_dim)
    weights = _masked_softmax(query @ w_a @ keys.transpose(1, 2), mask[:, None])
    context, w = attn(query, keys, mask)
    torch.testing.assert_close(w, weights, rtol=0, atol=ATOL)
    torch.testing.assert_close(context, weights @ keys, rtol=0, atol=ATOL)


def test_luong_concat_is_v_tanh_of_w_times_concatenation() -> None:
    attn = LuongAttention(4, 6, score="concat", hidden_dim=5).double()
    keys, mask = _memory()
    query = torch.randn(3, 2, 4, dtype=F64)
    s = attn.score
    w_a = torch.cat([s.query_proj.weight, s.key_proj.weight], dim=1)  # (hidden, 4 + 6)
    pairs = torch.cat(
        [query[:, :, None, :].expand(3, 2, 7, 4), keys[:, None, :, :].expand(3, 2, 7, 6)], dim=-1
    )  # [h_t; h_s] for every pair
    scores = torch.tanh(pairs @ w_a.T + s.key_proj.bias) @ s.v
    weights = _masked_softmax(scores, mask[:, None])
    context, w = attn(query, keys, mask)
    torch.testing.assert_close(w, weights, rtol=0, atol=ATOL)
    torch.testing.assert_close(context, weights @ keys, rtol=0, atol=ATOL)


def test_attentional_hidden_is_luong_eq5() -> None:
    combine = AttentionalHidden(4, 6, output_dim=3).double()
    context, query = torch.randn(2, 5, 6, dtype=F64), torch.randn(2, 5, 4, dtype=F64)
    expected = torch.tanh(torch.cat([context, query], -1) @ combine.combine.weight.T)
    torch.testing.assert_close(combine(context, query), expected, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="context"):
        combine(context[:, :3], query)


# --- masks, empty rows, sparse normalisers -------------------------------------------------


MODULES = {
    "bahdanau": lambda: BahdanauAttention(6, 6, 5),
    "luong-dot": lambda: LuongAttention(6, 6, score="dot"),
    "luong-general": lambda: LuongAttention(6, 6, score="general"),
    "luong-concat": lambda: LuongAttention(6, 6, score="concat"),
    "local-m": lambda: LocalAttention(6, 6, window=2, mode="local-m"),
    "local-p": lambda: LocalAttention(6, 6, window=2, mode="local-p"),
}


@pytest.mark.parametrize("name", MODULES)
def test_padding_is_ignored_and_gets_zero_weight(name: str) -> None:
    attn = MODULES[name]().double()
    keys, mask = _memory()
    query = torch.randn(3, 4, 6, dtype=F64)
    context, weights = attn(query, keys, mask)
    assert (weights.masked_select(~mask[:, None, :]) == 0).all()
    noisy = keys.masked_fill(~mask[..., None], float("nan"))
    noisy_context, noisy_weights = attn(query, noisy, mask)
    torch.testing.assert_close(noisy_context, context, rtol=0, atol=ATOL)
    torch.testing.assert_close(noisy_weights, weights, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", MODULES)
def test_all_masked_row_gives_zero_context_and_no_nan(name: str) -> None:
    attn = MODULES[name]()
    keys, mask = _memory(dtype=torch.float32)
    mask[1] = False
    keys.requires_grad_()
    query = torch.randn(3, 2, 6, requires_grad=True)
    context, weights = attn(query, keys, mask)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    assert (context[1] == 0).all() and (weights[1] == 0).all()
    (context.sum() + weights.sum()).backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(keys.grad).all()
    for p in attn.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15"])
@pytest.mark.parametrize(
    "build",
    [
        lambda n: BahdanauAttention(6, 6, 5, normalizer=n),
        lambda n: LuongAttention(6, 6, score="dot", normalizer=n),
        lambda n: LocalAttention(6, 6, window=3, mode="local-m", normalizer=n),
    ],
)
def test_sparse_normalizers_give_sparse_weights(build, normalizer: str) -> None:
    attn = build(normalizer).double()
    if isinstance(attn, BahdanauAttention):
        with torch.no_grad():  # tanh bounds the additive score: widen its range
            attn.score.v.mul_(20)
    keys = 3 * torch.randn(4, 9, 6, dtype=F64)  # spread scores, so sparsity shows
    query = 3 * torch.randn(4, 5, 6, dtype=F64)
    _, weights = attn(query, keys)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 5, dtype=F64), rtol=0, atol=1e-9)
    assert (weights >= 0).all()
    # Exact zeros at positions the module was free to attend to (for local-m: in the window).
    if isinstance(attn, LocalAttention):
        window = (torch.arange(9)[None, :] - torch.arange(5)[:, None]).abs() <= 3
        assert (weights[:, window] == 0).any()
    else:
        assert (weights == 0).float().mean() > 0.3


def test_normalizer_options_reach_the_normalizer() -> None:
    keys, _ = _memory()
    query = 3 * torch.randn(3, 6, dtype=F64)
    attn = LuongAttention(6, 6, score="dot", normalizer="entmax", normalizer_options={"alpha": 2.0})
    _, weights = attn.double()(query, 3 * keys)
    reference = LuongAttention(6, 6, score="dot", normalizer="sparsemax").double()
    torch.testing.assert_close(weights, reference(query, 3 * keys)[1], rtol=0, atol=1e-6)


# --- local attention ---------------------------------------------------------------------


def test_local_m_window_is_exact() -> None:
    attn = LocalAttention(6, 6, window=1, mode="local-m", score="dot").double()
    keys = torch.randn(2, 8, 6, dtype=F64)
    query = torch.randn(2, 5, 6, dtype=F64)
    _, weights = attn(query, keys)
    scores = query @ keys.transpose(1, 2)
    for t in range(5):
        lo, hi = max(t - 1, 0), t + 2
        outside = torch.ones(8, dtype=torch.bool)
        outside[lo:hi] = False
        assert (weights[:, t, outside] == 0).all()
        # Without the Gaussian (the paper's local-m) it is softmax over the window.
        expected = torch.softmax(scores[:, t, lo:hi], dim=-1)
        torch.testing.assert_close(weights[:, t, lo:hi], expected, rtol=0, atol=ATOL)


def test_local_m_gaussian_multiplies_normalised_weights() -> None:
    window = 2
    attn = LocalAttention(6, 6, window=window, mode="local-m", score="dot", gaussian=True)
    attn = attn.double()
    keys = torch.randn(1, 9, 6, dtype=F64)
    query = torch.randn(1, 6, dtype=F64)
    context, weights = attn(query, keys, position=4)
    s = torch.arange(9, dtype=F64)
    in_window = (s - 4).abs() <= window
    aligned = _masked_softmax(query @ keys[0].T, in_window[None])[0]
    sigma = window / 2
    expected = aligned * torch.exp(-((s - 4) ** 2) / (2 * sigma**2))
    torch.testing.assert_close(weights[0], expected, rtol=0, atol=ATOL)
    assert weights.sum() < 1  # the Gaussian is applied after normalisation, no renormalising
    torch.testing.assert_close(context[0], expected @ keys[0], rtol=0, atol=ATOL)


def test_local_m_positions_from_argument_and_clamped_to_real_length() -> None:
    attn = LocalAttention(6, 6, window=0, mode="local-m", score="dot").double()
    keys, mask = _memory()  # real lengths 7, 4, 2
    query = torch.randn(3, 6, dtype=F64)
    _, weights = attn(query, keys, mask, position=torch.tensor([3, 3, 3]))
    # window 0: a one-hot at min(t, S - 1)
    assert weights.argmax(-1).tolist() == [3, 3, 1]
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, dtype=F64))
    # default position of a multi-step query is its index
    _, weights = attn(torch.randn(3, 5, 6, dtype=F64), keys, mask)
    assert weights[0].argmax(-1).tolist() == [0, 1, 2, 3, 4]
    assert weights[2].argmax(-1).tolist() == [0, 1, 1, 1, 1]


def test_local_p_position_lies_in_the_real_source() -> None:
    attn = LocalAttention(6, 6, window=2, mode="local-p", score="general").double()
    with torch.no_grad():  # push the predictor to both extremes of the sigmoid
        attn.position_v.weight.mul_(50)
    _, mask = _memory()
    query = 5 * torch.randn(3, 40, 6, dtype=F64)
    lengths = mask.sum(-1)
    p = attn.predict_position(query, lengths)
    assert p.shape == (3, 40)
    assert (p >= 0).all() and (p <= (lengths[:, None] - 1)).all()
    assert (p[0] > 5.5).any() and (p[0] < 0.5).any()  # the range really is used


def test_local_p_weights_follow_eq10() -> None:
    window = 2
    attn = LocalAttention(6, 6, window=window, mode="local-p", score="general").double()
    keys, mask = _memory()
    query = torch.randn(3, 4, 6, dtype=F64, requires_grad=True)
    _, weights = attn(query, keys, mask)
    p = attn.predict_position(query, mask.sum(-1))[..., None]
    s = torch.arange(7, dtype=F64)
    allowed = ((s - p).abs() <= window) & mask[:, None, :]
    scores = query @ attn.score.weight.weight @ keys.transpose(1, 2)
    expected = _masked_softmax(scores, allowed) * torch.exp(
        -((s - p) ** 2) / (2 * (window / 2) ** 2)
    )
    torch.testing.assert_close(weights, expected, rtol=0, atol=ATOL)
    assert (weights.masked_select(~allowed) == 0).all()
    # The predictor learns through the Gaussian.
    weights.sum().backward()
    assert attn.position_proj.weight.grad.abs().sum() > 0


# --- dtypes, devices ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", MODULES)
def test_low_precision(name: str, dtype: torch.dtype) -> None:
    attn = MODULES[name]()
    keys, mask = _memory(dtype=torch.float32)
    mask[2] = False
    query = torch.randn(3, 4, 6)
    _, ref_weights = attn(query, keys, mask)
    context, weights = attn.to(dtype)(query.to(dtype), keys.to(dtype), mask)
    assert context.dtype == dtype and weights.dtype == dtype
    assert torch.isfinite(context).all()
    torch.testing.assert_close(weights.float(), ref_weights, rtol=0, atol=0.05)


# --- argument checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "exc", "match"),
    [
        (lambda: LocalAttention(4, 4, window=-1), ValueError, "window"),
        (lambda: LocalAttention(4, 4, window=0, mode="local-p"), ValueError, "window"),
        (lambda: LocalAttention(4, 4, window=1.5), TypeError, "window"),
        (lambda: LocalAttention(4, 4, window=2, mode="local-x"), ValueError, "mode"),
        (lambda: LuongAttention(4, 4, score="cosine"), ValueError, "score"),
        (lambda: LuongAttention(4, 4, score="additive"), ValueError, "score"),
        (lambda: LuongAttention(4, 6, score="dot"), ValueError, "query_dim"),
        (lambda: LuongAttention(4, 4, normalizer="softermax"), ValueError, "normalizer"),
        (lambda: BahdanauAttention(4, 4, 8, chunk_size=0), ValueError, "chunk_size"),
        (lambda: BahdanauAttention(0, 4, 8), ValueError, "query_dim"),
        (lambda: AttentionalHidden(4, 4, output_dim=0), ValueError, "output_dim"),
    ],
)
def test_bad_construction_is_rejected(build, exc, match) -> None:
    with pytest.raises(exc, match=match):
        build()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"query": torch.randn(4)}, ValueError, "query"),
        ({"query": torch.randn(2, 3, 1, 4)}, ValueError, "query"),
        ({"query": torch.randn(2, 5)}, ValueError, "query_dim"),
        ({"keys": torch.randn(7, 6)}, ValueError, "keys"),
        ({"keys": torch.randn(2, 7, 5)}, ValueError, "key_dim"),
        ({"keys": torch.randn(3, 7, 6)}, ValueError, "batch"),
        ({"mask": torch.ones(2, 7)}, TypeError, "mask"),
        ({"mask": torch.ones(2, 7, dtype=torch.int64)}, TypeError, "mask"),
        ({"mask": torch.ones(2, 6, dtype=torch.bool)}, ValueError, "mask"),
        ({"mask": torch.ones(7, dtype=torch.bool)}, ValueError, "mask"),
        ({"projected_keys": torch.randn(2, 6, 8)}, ValueError, "projected_keys"),
        ({"projected_keys": torch.randn(2, 7, 9)}, ValueError, "projected_keys"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, exc, match) -> None:
    attn = BahdanauAttention(4, 6, 8)
    args = {"query": torch.randn(2, 4), "keys": torch.randn(2, 7, 6), **kwargs}
    with pytest.raises(exc, match=match):
        attn(**args)


def test_local_position_errors() -> None:
    keys = torch.randn(2, 7, 4)
    local_m = LocalAttention(4, 4, window=1, mode="local-m")
    with pytest.raises(ValueError, match="position"):
        local_m(torch.randn(2, 4), keys)
    with pytest.raises(TypeError, match="position"):
        local_m(torch.randn(2, 4), keys, position=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="position"):
        local_m(torch.randn(2, 3, 4), keys, position=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="position"):
        LocalAttention(4, 4, window=1, mode="local-p")(torch.randn(2, 4), keys, position=3)


# --- a toy task: attention learns the alignment ---------------------------------------------


class _Reverser(nn.Module):
    """Embedding encoder, GRU decoder with Bahdanau attention; output = f(context)."""

    def __init__(self, vocab: int, length: int, dim: int) -> None:
        super().__init__()
        self.length = length
        self.token = nn.Embedding(vocab, dim)
        self.where = nn.Embedding(length, dim)
        self.step = nn.Embedding(length, dim)
        self.cell = nn.GRUCell(2 * dim, dim)
        self.attention = BahdanauAttention(dim, dim, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = source.shape[0]
        keys = self.token(source) + self.where.weight
        cache = self.attention.precompute(keys)
        state = keys.new_zeros(batch, keys.shape[-1])
        logits, weights = [], []
        for t in range(self.length):
            # Bahdanau: the previous state s_{t-1} queries the memory.
            context, w = self.attention(state, keys, projected_keys=cache)
            step = self.step.weight[t].expand(batch, -1)
            state = self.cell(torch.cat([step, context], dim=-1), state)
            logits.append(self.out(context))
            weights.append(w)
        return torch.stack(logits, 1), torch.stack(weights, 1)


def test_bahdanau_attention_learns_the_alignment_of_a_reversal_task() -> None:
    torch.manual_seed(0)
    vocab, length = 10, 6
    model = _Reverser(vocab, length, dim=24)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        source = torch.randint(vocab, (32, length))
        logits, _ = model(source)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), source.flip(1).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        source = torch.randint(vocab, (200, length))
        logits, weights = model(source)
    accuracy = (logits.argmax(-1) == source.flip(1)).float().mean().item()
    aligned = torch.arange(length - 1, -1, -1)  # target step t reads source position L-1-t
    alignment = (weights.argmax(-1) == aligned).float().mean().item()
    assert accuracy > 0.95, accuracy
    assert alignment > 0.9, alignment


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
class TestCuda:
    @pytest.mark.parametrize("name", MODULES)
    def test_matches_cpu(self, name: str) -> None:
        attn = MODULES[name]()
        keys, mask = _memory(dtype=torch.float32)
        mask[2] = False
        query = torch.randn(3, 4, 6)
        context, weights = attn(query, keys, mask)
        gpu = attn.cuda()
        g_context, g_weights = gpu(query.cuda(), keys.cuda(), mask.cuda())
        assert g_context.device.type == "cuda"
        torch.testing.assert_close(g_context.cpu(), context, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g_weights.cpu(), weights, rtol=1e-4, atol=1e-5)
        half_context, _ = gpu.half()(query.cuda().half(), keys.cuda().half(), mask.cuda())
        assert torch.isfinite(half_context).all()
