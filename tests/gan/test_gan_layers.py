"""GAN layers against references: PyTorch's spectral norm, direct formulas, He's constant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from attnzoo.attention import SelfAttention2d
from attnzoo.gan import (
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchDiscrimination,
    MinibatchStdDev,
    PackedDiscriminator,
    PixelNorm,
    apply_spectral_norm,
    he_scale,
    is_spectrally_normalized,
    pack,
)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ConvTranspose2d(5, 4, 4, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 14 * 14, 3),
    )


def test_spectral_norm_equals_torch_layer_by_layer() -> None:
    torch.manual_seed(0)
    ours = _model()
    reference = _model()
    reference.load_state_dict(ours.state_dict())
    torch.manual_seed(1)
    apply_spectral_norm(ours, n_power_iterations=2)
    torch.manual_seed(1)
    for index in (0, 2, 4):  # the same order: torch draws each layer's u and v in turn
        torch_spectral_norm(reference[index], n_power_iterations=2)
    x = torch.randn(2, 3, 7, 7)
    for _ in range(3):  # training-mode calls run the power iteration
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
    ours.eval()
    reference.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("layer", ["linear", "conv", "conv_transpose"])
def test_spectral_norm_reaches_unit_largest_singular_value(layer: str) -> None:
    torch.manual_seed(2)
    module = {
        "linear": nn.Linear(7, 5),
        "conv": nn.Conv2d(3, 6, 3),
        "conv_transpose": nn.ConvTranspose2d(6, 3, 3),
    }[layer]
    apply_spectral_norm(module, n_power_iterations=30)
    module.train()
    module.weight  # noqa: B018 - a training-mode access runs the power iterations
    weight = module.weight.detach()
    # PyTorch normalises a transposed convolution along its output axis (dim 1).
    matrix = weight.transpose(0, 1) if layer == "conv_transpose" else weight
    sigma = torch.linalg.matrix_norm(matrix.flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=1e-4)


def test_spectral_norm_is_applied_once_and_spares_gamma() -> None:
    block = nn.Sequential(nn.Conv2d(3, 16, 1), SelfAttention2d(16))
    apply_spectral_norm(block)
    apply_spectral_norm(block)
    attention = block[1]
    for conv in (block[0], attention.query, attention.key, attention.value):
        assert is_spectrally_normalized(conv)
        assert len(conv.parametrizations["weight"]) == 1
    assert isinstance(attention.gamma, nn.Parameter)
    assert not is_spectrally_normalized(nn.Linear(2, 2))


def test_spectral_norm_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_power_iterations"):
        apply_spectral_norm(nn.Linear(2, 2), n_power_iterations=0)
    with pytest.raises(ValueError, match="eps"):
        apply_spectral_norm(nn.Linear(2, 2), eps=0.0)


def test_minibatch_discrimination_equals_a_loop() -> None:
    torch.manual_seed(3)
    layer = MinibatchDiscrimination(5, num_kernels=3, kernel_dim=4).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    out = layer(x)
    m = (x @ layer.T).view(6, 3, 4)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for i in range(6):
        for j in range(6):
            if i != j:
                expected[i] += torch.exp(-(m[i] - m[j]).abs().sum(-1))
    torch.testing.assert_close(out[:, :5], x, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 5:], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(layer(x[:1])[:, 5:], torch.zeros(1, 3, dtype=torch.float64))


def test_minibatch_discrimination_tells_a_collapsed_batch() -> None:
    torch.manual_seed(4)
    layer = MinibatchDiscrimination(4, num_kernels=2, kernel_dim=3)
    diverse = layer(torch.randn(8, 4) * 5)[:, 4:]
    collapsed = layer(torch.randn(1, 4).expand(8, 4))[:, 4:]
    assert torch.allclose(collapsed, torch.full_like(collapsed, 7.0))  # 7 identical others
    assert diverse.max() < 7.0


def test_minibatch_discrimination_gradcheck() -> None:
    torch.manual_seed(5)
    layer = MinibatchDiscrimination(3, num_kernels=2, kernel_dim=2).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def _stddev_direct(x: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    batch = x.shape[0]
    group = min(group_size, batch)
    groups = batch // group
    stats = torch.empty(batch, dtype=x.dtype)
    for n in range(batch):
        members = x[[m for m in range(batch) if m % groups == n % groups]]
        variance = ((members - members.mean(0)) ** 2).mean(0)
        stats[n] = torch.sqrt(variance + eps).mean()
    return stats


@pytest.mark.parametrize(("batch", "group_size"), [(8, 4), (6, 3), (3, 4), (5, 1), (6, 2)])
def test_minibatch_stddev_equals_the_direct_formula(batch: int, group_size: int) -> None:
    torch.manual_seed(6)
    x = torch.randn(batch, 3, 5, 7, dtype=torch.float64)
    out = MinibatchStdDev(group_size)(x)
    assert out.shape == (batch, 4, 5, 7)
    torch.testing.assert_close(out[:, :3], x, rtol=0, atol=0)
    expected = _stddev_direct(x, group_size)
    torch.testing.assert_close(out[:, 3], expected.view(batch, 1, 1).expand(batch, 5, 7))


def test_minibatch_stddev_on_features_and_errors() -> None:
    x = torch.randn(4, 6, dtype=torch.float64)
    out = MinibatchStdDev(2)(x)
    assert out.shape == (4, 7)
    torch.testing.assert_close(out[:, 6], _stddev_direct(x, 2))
    with pytest.raises(ValueError, match="multiple of the group size"):
        MinibatchStdDev(4)(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match="batch, features"):
        MinibatchStdDev(4)(torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="group_size"):
        MinibatchStdDev(0)


def test_pixel_norm() -> None:
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    out = PixelNorm()(x)
    mean_square = out.pow(2).mean(dim=1)
    torch.testing.assert_close(mean_square, torch.ones_like(mean_square), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, x / torch.sqrt((x**2).mean(1, keepdim=True) + 1e-8))


def test_equalized_layers_scale_by_he_constant() -> None:
    torch.manual_seed(7)
    linear = EqualizedLinear(12, 5)
    assert linear.scale == pytest.approx(math.sqrt(2 / 12))
    x = torch.randn(3, 12)
    torch.testing.assert_close(linear(x), x @ (linear.weight * math.sqrt(2 / 12)).T + linear.bias)
    conv = EqualizedConv2d(3, 4, 3, padding=1)
    assert conv.scale == pytest.approx(math.sqrt(2 / (3 * 3 * 3)))
    images = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(
        conv(images), F.conv2d(images, conv.weight * conv.scale, conv.bias, padding=1)
    )
    # Stored weights are N(0, 1): the He scaling happens at run time, not at init.
    big = EqualizedLinear(400, 300)
    assert big.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert he_scale(8, gain=1.0) == pytest.approx(1 / math.sqrt(8))


def test_equalized_layer_outputs_have_unit_scale_like_he_init() -> None:
    torch.manual_seed(8)
    conv = EqualizedConv2d(64, 64, 3, bias=False)
    x = torch.randn(16, 64, 8, 8)
    # He initialisation gives E[y^2] = 2 E[x^2] (the factor 2 makes up for a ReLU after).
    assert conv(x).pow(2).mean().item() == pytest.approx(2.0, rel=0.1)


def test_equalized_layer_errors() -> None:
    with pytest.raises(ValueError, match="in_features"):
        EqualizedLinear(4, 2)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="channels"):
        EqualizedConv2d(3, 2, 1)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="kernel_size"):
        EqualizedConv2d(3, 2, 0)


def test_pack_shapes_and_order() -> None:
    x = torch.arange(6 * 2).view(6, 2).float()
    packed = pack(x, 3)
    assert packed.shape == (2, 6)
    assert torch.equal(packed[0], torch.cat([x[0], x[1], x[2]]))
    images = torch.randn(8, 3, 5, 4)
    packed_images = pack(images, 4)
    assert packed_images.shape == (2, 12, 5, 4)
    assert torch.equal(packed_images[1, 3:6], images[5])
    assert pack(images, 1) is images or torch.equal(pack(images, 1), images)
    with pytest.raises(ValueError, match="multiple of `packing`"):
        pack(torch.randn(5, 2), 2)
    with pytest.raises(ValueError, match="packing"):
        pack(torch.randn(4, 2), 0)


def test_packed_discriminator() -> None:
    inner = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    packed = PackedDiscriminator(inner, 2)
    x = torch.randn(6, 2)
    assert packed(x).shape == (3, 1)
    torch.testing.assert_close(packed(x), inner(x.view(3, 4)))
    with pytest.raises(TypeError, match="features"):
        packed.features(x)
