"""Self-attention over the positions of a feature map (SAGAN; Zhang et al. 2019).

For a feature map ``x`` of ``N = H * W`` positions with ``C`` channels, three 1x1
convolutions give queries, keys and values; every position attends to every position,

    beta_{j,i} = normalise_i(q_j . k_i),   o_j = sum_i beta_{j,i} v_i,   y = gamma * o + x,

with a learnable scalar ``gamma`` initialised to 0, so the block starts as the identity and
the network learns how much non-local evidence to mix in. There is no ``1/sqrt(d)`` score
scaling, as in the paper.

Naming against the paper: ``query`` is its ``g``, ``key`` its ``f``, ``value`` its ``h``,
``out`` its ``v``. The default is the first form of the paper: ``f`` and ``g`` map to
``C/8`` channels and ``h`` maps to ``C`` channels with no output convolution. Setting
``value_channels`` below ``C`` (e.g. ``C // 2`` as in BigGAN and the released SAGAN code)
adds the 1x1 output convolution ``out`` back to ``C`` channels. The convolutions have no
bias, as in the paper's ``W x``. They are plain ``nn.Conv2d`` attributes, so a GAN can wrap
them with spectral normalisation after construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .normalizers import Normalizer, get_normalizer, masked_normalize
from .validation import check_positive, check_rank, check_size


class SelfAttention2d(nn.Module):
    """SAGAN self-attention block for ``(batch, channels, height, width)`` feature maps.

    Args:
        channels: ``C``, channels of the input and output.
        key_channels: query/key width; defaults to ``channels // 8`` (so ``channels`` must
            then be at least 8).
        value_channels: value width; defaults to ``channels`` (no output convolution);
            any other width adds ``out``, a 1x1 convolution back to ``channels``.
        normalizer: registry name or callable mapping each position's scores over the
            ``N`` (or ``N / 4``) key positions to weights. ``"softmax"`` runs on
            ``scaled_dot_product_attention`` when weights are not requested.
        downsample: max-pool keys and values 2x2 before attention, as the released SAGAN
            and BigGAN code do (``N / 4`` key positions; odd sizes are floored).
        **normalizer_options: options of a named normaliser.

    Parameters: ``query``, ``key``, ``value`` (``nn.Conv2d`` 1x1, no bias), ``out``
    (``nn.Conv2d`` or ``None``) and ``gamma`` (0-dim, initialised to 0).
    """

    def __init__(
        self,
        channels: int,
        key_channels: int | None = None,
        value_channels: int | None = None,
        normalizer: str | Normalizer = "softmax",
        downsample: bool = False,
        **normalizer_options: object,
    ) -> None:
        super().__init__()
        check_positive(channels, "channels")
        if key_channels is None:
            if channels < 8:
                raise ValueError(
                    f"`channels` must be >= 8 when `key_channels` is not given (the default "
                    f"key width is channels // 8), got {channels}; pass `key_channels`"
                )
            key_channels = channels // 8
        value_channels = channels if value_channels is None else value_channels
        check_positive(key_channels, "key_channels")
        check_positive(value_channels, "value_channels")
        self.channels = channels
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.downsample = downsample
        self._use_sdpa = normalizer == "softmax" and not normalizer_options
        self.normalize = get_normalizer(normalizer, **normalizer_options)

        self.query = nn.Conv2d(channels, key_channels, kernel_size=1, bias=False)
        self.key = nn.Conv2d(channels, key_channels, kernel_size=1, bias=False)
        self.value = nn.Conv2d(channels, value_channels, kernel_size=1, bias=False)
        self.out: nn.Conv2d | None = (
            None
            if value_channels == channels
            else nn.Conv2d(value_channels, channels, kernel_size=1, bias=False)
        )
        self.gamma = nn.Parameter(torch.zeros(()))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_channels={self.key_channels}, "
            f"value_channels={self.value_channels}, downsample={self.downsample}"
        )

    def forward(self, x: Tensor, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Apply ``y = gamma * attention(x) + x``.

        Args:
            x: ``(batch, channels, height, width)``.
            return_weights: also return the attention weights.

        Returns:
            ``y`` of the shape of ``x``; with ``return_weights=True`` also the weights
            ``(batch, N, M)`` with ``N = height * width`` query positions and ``M = N``
            key positions (``(height // 2) * (width // 2)`` with ``downsample``), in
            row-major ``(h, w)`` order; each row sums to one.
        """
        check_rank(x, 4, "x", "(batch, channels, height, width)")
        check_size(x, 1, self.channels, "x", "channels")
        height, width = x.shape[-2:]

        q = self.query(x)
        k = self.key(x)
        v = self.value(x)
        if self.downsample:
            k = F.max_pool2d(k, kernel_size=2)
            v = F.max_pool2d(v, kernel_size=2)
        q = rearrange(q, "b c h w -> b (h w) c")
        k = rearrange(k, "b c h w -> b (h w) c")
        v = rearrange(v, "b c h w -> b (h w) c")

        weights = None
        if self._use_sdpa and not return_weights:
            o = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (b, N, value_channels)
        else:
            scores = q @ k.transpose(-1, -2)  # (b, N, M)
            weights = masked_normalize(scores, None, self.normalize, dim=-1)
            o = weights @ v

        o = rearrange(o, "b (h w) c -> b c h w", h=height, w=width)
        if self.out is not None:
            o = self.out(o)
        y = self.gamma.to(o.dtype) * o + x
        if return_weights:
            assert weights is not None
            return y, weights
        return y


__all__ = ["SelfAttention2d"]
