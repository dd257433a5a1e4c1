"""The functional core of every attention module: :func:`attend`, and the mask helpers.

``attend(q, k, v)`` computes ``normalize(q @ k^T * scale + bias) @ v`` over the last two axes,
with any number of leading batch axes (``(batch, heads, seq, head_dim)`` inside the modules).
The optional additive ``bias`` is how position schemes that act on the scores (ALiBi,
relative positions, a soft span) reach every normaliser through one code path.
Softmax without returned weights goes through
:func:`torch.nn.functional.scaled_dot_product_attention`, so it picks up the fused kernels
(flash, memory-efficient, cuDNN) on GPU; sparsemax, 1.5-entmax and alpha-entmax without
weights, dropout or bias go through :func:`~attnzoo.attention.blockwise.blockwise_attention`
(query tiles, no ``(n_q, n_k)`` tensor); every other case materialises the score matrix,
sets its masked entries to ``-inf`` and normalises it, as
:func:`~attnzoo.attention.normalizers.masked_normalize` does.

Masks are boolean with ``True`` = may attend; a ``-inf`` bias entry forbids its key too. A
query row with no key it may attend to returns zeros (and passes zero gradient), never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import causal_tiles
from .blockwise import BLOCKWISE_NORMALIZERS, blockwise_attention
from .normalizers import Normalizer, get_normalizer
from .validation import (
    check_bool_mask,
    check_broadcastable_to,
    check_min_rank,
    check_positive,
    check_probability,
    check_rank,
    check_size,
    check_tensor,
)


def causal_mask(n_q: int, n_k: int, device: torch.device | str | None = None) -> Tensor:
    """Bottom-right aligned causal mask: the last query sees every key, query ``i`` sees keys
    ``j <= i + (n_k - n_q)``.

    This is the alignment incremental decoding needs (the ``n_q`` new queries are the last
    ``n_q`` positions of an ``n_k``-long sequence whose earlier keys are cached). For
    ``n_q == n_k`` it is the usual lower-triangular mask, the one SDPA's ``is_causal`` uses;
    for ``n_q > n_k`` the first ``n_q - n_k`` queries see no key at all.

    Returns:
        ``(n_q, n_k)`` boolean tensor, True = may attend.
    """
    rows = torch.arange(n_q, device=device).unsqueeze(-1)
    cols = torch.arange(n_k, device=device)
    return cols <= rows + (n_k - n_q)


def padding_mask_to_attention_mask(padding_mask: Tensor) -> Tensor:
    """Key-padding mask ``(batch, n_k)`` (True = real token) -> ``(batch, 1, 1, n_k)``.

    The result broadcasts over heads and queries against scores ``(batch, heads, n_q, n_k)``.
    """
    check_bool_mask(padding_mask, "padding_mask")
    check_rank(padding_mask, 2, "padding_mask", "(batch, n_k)")
    return padding_mask[:, None, None, :]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    normalizer: str | Normalizer = "softmax",
    alpha: float | Tensor | None = None,
    dropout: float = 0.0,
    scale: float | None = None,
    return_weights: bool = False,
    training: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of ``q`` over ``(k, v)``: ``normalize(q @ k^T * scale + bias) @ v``.

    Args:
        q: queries ``(..., n_q, d)``.
        k: keys ``(..., n_k, d)``; the leading axes ``...`` equal those of ``q``.
        v: values ``(..., n_k, d_v)``.
        mask: boolean, True = may attend, broadcastable to ``(..., n_q, n_k)`` without
            growing it. A key-padding mask ``(batch, n_k)`` does NOT broadcast correctly
            against ``(batch, heads, n_q, n_k)``: expand it first with
            :func:`padding_mask_to_attention_mask` (modules do this for their callers).
        bias: additive score bias, a floating tensor broadcastable to ``(..., n_q, n_k)``
            without growing it (e.g. ``(1, heads, n_q, n_k)`` for ALiBi), added after the
            scale and before the normaliser (every normaliser sees it); cast to the dtype
            of ``q``. A ``-inf`` entry forbids its key like a False ``mask`` entry.
            Gradients flow into it (a learned bias trains).
        causal: also forbid query ``i`` to see keys ``j > i + (n_k - n_q)``
            (bottom-right alignment, see :func:`causal_mask`); combined with ``mask`` by AND.
        normalizer: registry name (``"softmax"``, ``"sparsemax"``, ``"entmax15"``,
            ``"entmax"``, ``"hardmax"``, ``"gumbel"``) or a callable ``f(scores, dim)``.
        alpha: the ``"entmax"`` exponent, > 1 (2 is sparsemax): a float, or a tensor
            broadcastable to the scores, e.g. ``(1, heads, 1, 1)`` for one alpha per head.
        dropout: probability of zeroing an attention weight (rescaling the rest), in [0, 1).
        scale: score scale, > 0; default ``1 / sqrt(d)``.
        return_weights: also return the attention weights.
        training: apply dropout only when True (pass ``module.training``).

    Returns:
        ``out`` of shape ``(..., n_q, d_v)``, or ``(out, weights)`` with weights
        ``(..., n_q, n_k)`` (the normalised weights, before dropout) when ``return_weights``.
        A query row with no allowed key gives zeros in both.
    """
    _check_inputs(q, k, v, mask, bias, causal, alpha, normalizer, dropout, scale)
    p_drop = dropout if training else 0.0
    if bias is not None:
        bias = bias.to(q.dtype)

    if _is_softmax(normalizer) and not return_weights and not _trains_bias_on_cpu(q, bias):
        if _by_causal_tiles(q, k, mask, bias, causal):
            return _causal_tiles(q, k, v, mask, bias, p_drop, scale)
        if bias is not None:
            return _sdpa_with_bias(q, k, v, mask, bias, causal, p_drop, scale)
        return _sdpa(q, k, v, mask, causal, p_drop, scale)

    if (
        isinstance(normalizer, str)
        and normalizer in BLOCKWISE_NORMALIZERS
        and not return_weights
        and p_drop == 0.0
        and bias is None
    ):
        # The sparse maps in query tiles: the same result without the (n_q, n_k) score
        # matrix, whose allocation (not the arithmetic) dominates the dense path's time.
        return blockwise_attention(
            q, k, v, normalizer=normalizer, alpha=alpha, mask=mask, causal=causal, scale=scale
        )

    weights = _weights(q, k, mask, bias, causal, normalizer, alpha, scale)
    dropped = F.dropout(weights, p_drop, training=p_drop > 0)
    out = torch.matmul(dropped, v)
    return (out, weights) if return_weights else out


def _weights(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    causal: bool,
    normalizer: str | Normalizer,
    alpha: float | Tensor | None,
    scale: float | None,
) -> Tensor:
    """The materialised score matrix, biased, masked and normalised (inputs checked).

    The scale multiplies the ``(n_q, d)`` queries rather than the ``(n_q, n_k)`` product,
    and the bias and the mask go into the product's own fresh tensor in place: on a CPU,
    every new tensor of the scores' size costs about as much as the softmax over it.
    """
    mask = _merge_causal(mask, causal, q.shape[-2], k.shape[-2], q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q * scale, k.transpose(-2, -1))
    if bias is not None:
        scores = scores.add_(bias)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    options = {} if alpha is None else {"alpha": alpha}
    return get_normalizer(normalizer, **options)(scores, dim=-1)


def _is_softmax(normalizer: str | Normalizer) -> bool:
    return isinstance(normalizer, str) and normalizer == "softmax"


def _merge_causal(
    mask: Tensor | None, causal: bool, n_q: int, n_k: int, device: torch.device
) -> Tensor | None:
    """AND the user's mask with the bottom-right causal mask (if ``causal``)."""
    # A single query is the last position: bottom-right alignment lets it see every key,
    # so one decoding step needs no causal mask (and builds none, in every layer).
    if not causal or n_q == 1:
        return mask
    tri = causal_mask(n_q, n_k, device)
    return tri if mask is None else mask & tri


def _sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    causal: bool,
    p_drop: float,
    scale: float | None,
) -> Tensor:
    """Softmax attention through SDPA, with fully masked query rows forced to zeros.

    SDPA's own ``is_causal`` is top-left aligned, so it is used only when it coincides with
    the bottom-right alignment (``n_q == n_k``) and no other mask is given; otherwise the
    causal mask is materialised and merged with ``mask``.
    """
    n_q, n_k = q.shape[-2], k.shape[-2]
    if causal and mask is None and n_q == n_k:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=p_drop, is_causal=True, scale=scale
        )
    mask = _merge_causal(mask, causal, n_q, n_k, q.device)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, scale=scale)
    # Depending on the backend (and the PyTorch version), a row with no allowed key may
    # come out of SDPA as NaN, and its backward too. Such rows attend everywhere instead
    # (finite, harmless numbers) and are zeroed afterwards by a product with ``has_key``,
    # so the result and the gradient through it are exactly zero there. A product, not
    # ``masked_fill``: with a broadcast mask, ``masked_fill`` takes longer on a CPU than
    # the attention itself at small n. ``has_key`` is a reduction over the mask's own
    # (usually broadcast, small) shape, with no host sync.
    has_key = mask.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask | ~has_key, dropout_p=p_drop, scale=scale
    )
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return out * has_key  # out of place: SDPA keeps its output for the backward
    return out.mul_(has_key)


def _sdpa_with_bias(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor,
    causal: bool,
    p_drop: float,
    scale: float | None,
) -> Tensor:
    """Softmax attention through SDPA with an additive float ``attn_mask``.

    The boolean mask (and the causal one) become ``-inf`` entries of the bias. A row whose
    every entry is then ``-inf`` would come out as NaN on some backends, so, as in
    :func:`_sdpa`, such rows get a finite bias and their output is zeroed afterwards.

    The bias is as large as the scores, so each pass over it counts: one ``where`` writes
    the merged bias, a row max (a read) finds the rows with no key, and they are fixed in
    place. A fresh tensor from ``where`` or a fill costs more than the arithmetic on a
    CPU (its pages are faulted in), hence no further copies.
    """
    mask = _merge_causal(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if bias.dim() < 2:  # SDPA takes an attn_mask of rank 2 or more
        bias = bias.view(*(1,) * (2 - bias.dim()), *bias.shape)
    if mask is not None:
        bias = torch.where(mask, bias, float("-inf"))
    if bias.shape[-1] == 0:  # no key at all (amax refuses an empty axis)
        has_key = bias.new_zeros((*bias.shape[:-1], 1), dtype=torch.bool)
    else:
        has_key = bias.amax(dim=-1, keepdim=True) != float("-inf")
    # The tensor from `where` is ours to fix in place; the caller's bias is not.
    fill = bias.masked_fill_ if mask is not None else bias.masked_fill
    bias = fill(~has_key, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop, scale=scale)
    return out * has_key if out.requires_grad else out.mul_(has_key)


def _trains_bias_on_cpu(q: Tensor, bias: Tensor | None) -> bool:
    """Whether a bias that takes a gradient goes through the dense path rather than SDPA.

    SDPA's CPU kernels give no gradient to a float mask: it falls back to its unfused math
    path, which the dense path here beats (relative attention at ``(2, 4, 1024, 64)`` over
    2048 keys: 1.5x the forward, 1.2x forward+backward). GPU kernels take such a bias.
    """
    return (
        bias is not None
        and bias.requires_grad
        and torch.is_grad_enabled()
        and q.device.type == "cpu"
    )


def _by_causal_tiles(
    q: Tensor, k: Tensor, mask: Tensor | None, bias: Tensor | None, causal: bool
) -> bool:
    """Whether causal softmax attention is cut into query tiles (see
    :mod:`~attnzoo.attention.causal_tiles`).

    Only where SDPA cannot skip the future keys itself: its ``is_causal`` serves a causal
    mask alone over as many queries as keys; a boolean or float mask makes it score every
    key. Not with a bias that trains: slicing it would give its gradient one full-size zero
    tensor per tile (such a bias takes the dense path, see :func:`_trains_bias_on_cpu`).
    """
    if not causal or not causal_tiles.tiles_pay(q):
        return False
    if bias is None:
        return mask is not None or q.shape[-2] != k.shape[-2]
    return not (bias.requires_grad and torch.is_grad_enabled())


def _causal_tiles(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    p_drop: float,
    scale: float | None,
) -> Tensor:
    """Causal softmax attention by query tiles, each over the keys up to its last query;
    the merged mask or bias is built per tile, not whole."""

    def tile(t: causal_tiles.QueryTile) -> Tensor:
        if bias is None:
            return _sdpa(t.q, t.k, t.v, t.mask, True, p_drop, scale)
        bias_t = causal_tiles.tile_of(bias, t.start, t.stop, t.keys)
        return _sdpa_with_bias(t.q, t.k, t.v, t.mask, bias_t, True, p_drop, scale)

    return causal_tiles.by_query_tiles(q, k, v, mask, tile)


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    causal: bool,
    alpha: float | Tensor | None,
    normalizer: str | Normalizer,
    dropout: float,
    scale: float | None,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first bad argument of :func:`attend`."""
    check_min_rank(q, 2, "q", "(..., n_q, d)")
    check_rank(k, q.dim(), "k", f"(..., n_k, d) with the {q.dim() - 2} leading axes of `q`")
    check_rank(v, q.dim(), "v", f"(..., n_k, d_v) with the {q.dim() - 2} leading axes of `q`")
    batch = q.shape[:-2]
    for name, x in (("k", k), ("v", v)):
        if x.shape[:-2] != batch:
            raise ValueError(
                f"`{name}` must have the leading (batch) axes of `q` {tuple(batch)}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.dtype != q.dtype:
            raise TypeError(f"`{name}` must have the dtype of `q` ({q.dtype}), got {x.dtype}")
    check_size(k, -1, q.shape[-1], "k", "the feature size d of `q`")
    check_size(v, -2, k.shape[-2], "v", "the number of keys n_k of `k`")
    scores_shape = (*batch, q.shape[-2], k.shape[-2])
    if mask is not None:
        check_bool_mask(mask, "mask")
        check_broadcastable_to(mask, scores_shape, "mask", "scores (..., n_q, n_k) of shape")
    if bias is not None:
        check_tensor(bias, "bias")
        if not bias.is_floating_point():
            raise TypeError(
                f"`bias` must be a floating tensor of additive scores, got dtype {bias.dtype}; "
                "forbid keys with a boolean `mask`"
            )
        check_broadcastable_to(bias, scores_shape, "bias", "scores (..., n_q, n_k) of shape")
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool, got {type(causal).__name__}")
    if alpha is not None and normalizer != "entmax":
        raise ValueError(f"`alpha` only applies to normalizer='entmax', got {normalizer!r}")
    check_probability(dropout, "dropout")
    if scale is not None:
        check_positive(scale, "scale")


__all__ = ["attend", "causal_mask", "padding_mask_to_attention_mask"]
