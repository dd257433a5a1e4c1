"""Tests of SAGAN self-attention over feature maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from attnzoo.attention.self_attention_2d import SelfAttention2d


def hand_computation(block: SelfAttention2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop-free but layout-explicit SAGAN formula: s_ji = g(x_j) . f(x_i), softmax over i."""
    batch, channels, height, width = x.shape
    wq = block.query.weight[:, :, 0, 0]  # (key_channels, C)
    wk = block.key.weight[:, :, 0, 0]
    wv = block.value.weight[:, :, 0, 0]
    pixels = x.reshape(batch, channels, height * width)  # (b, C, N), row-major positions
    q = torch.einsum("kc,bcn->bnk", wq, pixels)
    k = torch.einsum("kc,bchw->bkhw", wk, x)
    v = torch.einsum("vc,bchw->bvhw", wv, x)
    if block.downsample:  # pool the projected keys and values, as the block does
        k, v = F.max_pool2d(k, 2), F.max_pool2d(v, 2)
    k = k.flatten(2)  # (b, key_channels, M)
    v = v.flatten(2)  # (b, value_channels, M)
    scores = torch.einsum("bnk,bkm->bnm", q, k)
    beta = torch.softmax(scores, dim=-1)
    o = torch.einsum("bnm,bvm->bvn", beta, v)
    if block.out is not None:
        o = torch.einsum("cv,bvn->bcn", block.out.weight[:, :, 0, 0], o)
    y = block.gamma * o.reshape(batch, channels, height, width) + x
    return y, beta


def test_identity_at_initialisation():
    torch.manual_seed(0)
    block = SelfAttention2d(16)
    x = torch.randn(2, 16, 4, 5)
    assert block.gamma.item() == 0.0
    assert torch.equal(block(x), x)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"value_channels": 8},
        {"key_channels": 3, "downsample": True},
        {"value_channels": 8, "downsample": True},
    ],
)
@pytest.mark.parametrize("return_weights", [False, True])
def test_equals_hand_computation(config, return_weights):
    torch.manual_seed(1)
    block = SelfAttention2d(16, **config).double()
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 16, 4, 6, dtype=torch.float64)
    expected, beta = hand_computation(block, x)
    if return_weights:
        y, weights = block(x, return_weights=True)
        torch.testing.assert_close(weights, beta, rtol=0, atol=1e-12)
    else:
        y = block(x)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_sdpa_path_equals_explicit_path_float32():
    torch.manual_seed(2)
    block = SelfAttention2d(32)
    with torch.no_grad():
        block.gamma.fill_(1.3)
    x = torch.randn(2, 32, 7, 9)
    fast = block(x)
    explicit, _ = block(x, return_weights=True)
    assert (fast - explicit).abs().max().item() <= 1e-5


def test_default_layout_is_original_sagan():
    block = SelfAttention2d(64)
    assert block.query.weight.shape == (8, 64, 1, 1)
    assert block.key.weight.shape == (8, 64, 1, 1)
    assert block.value.weight.shape == (64, 64, 1, 1)
    assert block.out is None
    widened = SelfAttention2d(64, value_channels=32)
    assert widened.out is not None and widened.out.weight.shape == (64, 32, 1, 1)


@pytest.mark.parametrize(("height", "width", "downsample"), [(3, 5, False), (6, 4, True)])
def test_non_square_shapes_and_weight_rows(height, width, downsample):
    torch.manual_seed(3)
    block = SelfAttention2d(8, downsample=downsample)
    x = torch.randn(2, 8, height, width)
    y, weights = block(x, return_weights=True)
    keys = (height // 2) * (width // 2) if downsample else height * width
    assert y.shape == x.shape
    assert weights.shape == (2, height * width, keys)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, height * width))


def test_sparsemax_normalizer():
    torch.manual_seed(4)
    block = SelfAttention2d(16, normalizer="sparsemax")
    with torch.no_grad():
        block.query.weight.mul_(10.0)
    x = torch.randn(2, 16, 4, 4)
    y, weights = block(x, return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 16))
    assert (weights == 0).any()
    assert torch.equal(block(x), y)  # the non-SDPA path without weights agrees


def test_gradient_reaches_gamma_and_convs():
    torch.manual_seed(5)
    block = SelfAttention2d(16, value_channels=8)
    block(torch.randn(2, 16, 3, 3)).square().sum().backward()
    assert block.gamma.grad is not None and block.gamma.grad.abs() > 0
    # With gamma = 0 the branch is cut off from the loss except through gamma itself.
    assert block.query.weight.grad.abs().sum() == 0
    with torch.no_grad():
        block.gamma.fill_(0.5)
    block.zero_grad()
    block(torch.randn(2, 16, 3, 3)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_spectral_norm_wrapping():
    torch.manual_seed(6)
    block = SelfAttention2d(16, value_channels=8)
    for name in ("query", "key", "value", "out"):
        setattr(block, name, spectral_norm(getattr(block, name)))
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(2, 16, 4, 4)
    y = block(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert block.query.parametrizations.weight.original.grad is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    torch.manual_seed(7)
    block = SelfAttention2d(16)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(2, 16, 4, 4)
    expected = block(x)
    block = block.to(dtype)
    for return_weights in (False, True):
        out = block(x.to(dtype), return_weights=return_weights)
        y = out[0] if return_weights else out
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), expected, rtol=0, atol=0.1)


def test_errors_name_the_argument():
    block = SelfAttention2d(16)
    with pytest.raises(ValueError, match="`x`.*4 dimensions"):
        block(torch.randn(2, 16, 9))
    with pytest.raises(ValueError, match="`x`.*channels = 16"):
        block(torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match="`channels`.*key_channels"):
        SelfAttention2d(4)
    assert SelfAttention2d(4, key_channels=2)(torch.randn(1, 4, 2, 2)).shape == (1, 4, 2, 2)
    with pytest.raises(ValueError, match="`value_channels`"):
        SelfAttention2d(16, value_channels=0)
    with pytest.raises(ValueError, match="`normalizer`"):
        SelfAttention2d(16, normalizer="nope")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_matches_cpu(self, dtype):
        torch.manual_seed(8)
        block = SelfAttention2d(32, value_channels=16)
        with torch.no_grad():
            block.gamma.fill_(1.0)
        x = torch.randn(2, 32, 8, 8)
        expected = block(x)
        out = block.to("cuda", dtype)(x.to("cuda", dtype))
        assert out.device.type == "cuda" and out.dtype == dtype
        atol = 1e-4 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(out.float().cpu(), expected, rtol=0, atol=atol)
