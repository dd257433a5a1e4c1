"""Attention heatmaps as matplotlib PNG files (any zoo model, cross-attention included).

bertviz renders in a notebook only; these functions write image files: one layer's heads
with token labels (:func:`save_layer_heatmaps`), or every layer x head as a grid
(:func:`save_model_heatmaps`). matplotlib is imported when a function is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .capture import AttentionCapture, AttentionView


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "attention heatmaps need matplotlib: pip install 'attnzoo[viz]'"
        ) from error
    return plt


def _view(capture: AttentionCapture, view: str | None) -> AttentionView:
    if not isinstance(capture, AttentionCapture):
        raise TypeError(f"`capture` must be an AttentionCapture, got {type(capture).__name__}")
    views = {v.name: v for v in capture.views()}
    if view is None:
        return next(iter(views.values()))
    if view not in views:
        raise ValueError(f"`view` must be one of {tuple(views)}, got {view!r}")
    return views[view]


def save_layer_heatmaps(
    capture: AttentionCapture,
    path: str | os.PathLike[str],
    layer: int = 0,
    view: str | None = None,
    columns: int = 4,
) -> Path:
    """One heatmap per head of ``layer``, labelled with the tokens.

    Args:
        capture: from :func:`~attnzoo.transformers_zoo.analysis.capture_attention`.
        path: the PNG file to write.
        layer: 0-based layer index.
        view: ``"self"``, or ``"encoder"``/``"decoder"``/``"cross"`` for an encoder-decoder
            capture (default: the first).
        columns: heads per row of the figure.
    """
    chosen = _view(capture, view)
    layers, heads = chosen.weights.shape[:2]
    if not 0 <= layer < layers:
        raise ValueError(f"`layer` must be in [0, {layers}), got {layer}")
    plt = _pyplot()
    columns = min(columns, heads)
    rows = -(-heads // columns)
    n_q, n_k = len(chosen.query_tokens), len(chosen.key_tokens)
    cell = max(2.2, 0.28 * max(n_q, n_k))
    fig, axes = plt.subplots(rows, columns, figsize=(cell * columns, cell * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= heads:
            ax.axis("off")
            continue
        ax.imshow(chosen.weights[layer, index].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"layer {layer} head {index}", fontsize=8)
        ax.set_xticks(range(n_k))
        ax.set_yticks(range(n_q))
        ax.set_xticklabels(chosen.key_tokens, rotation=90, fontsize=6)
        ax.set_yticklabels(chosen.query_tokens, fontsize=6)
    fig.suptitle(f"{chosen.name} attention (rows: from, columns: to)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_model_heatmaps(
    capture: AttentionCapture, path: str | os.PathLike[str], view: str | None = None
) -> Path:
    """Every layer (rows) x head (columns) as one mosaic of heatmaps, like bertviz's model
    view; ``view`` as in :func:`save_layer_heatmaps`."""
    chosen = _view(capture, view)
    layers, heads, n_q, n_k = chosen.weights.shape
    plt = _pyplot()
    # One image with a one-pixel NaN border between cells: one imshow call, fast to draw
    # even for 12 x 12 heads.
    gap = 1
    mosaic = torch.full((layers * (n_q + gap) - gap, heads * (n_k + gap) - gap), float("nan"))
    for layer in range(layers):
        for head in range(heads):
            top, left = layer * (n_q + gap), head * (n_k + gap)
            mosaic[top : top + n_q, left : left + n_k] = chosen.weights[layer, head]
    scale = 0.9 / max(n_q, n_k)
    fig, ax = plt.subplots(
        figsize=(max(4.0, scale * mosaic.shape[1] + 1), max(3.0, scale * mosaic.shape[0] + 1))
    )
    ax.imshow(mosaic.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([h * (n_k + gap) + (n_k - 1) / 2 for h in range(heads)])
    ax.set_xticklabels([f"h{h}" for h in range(heads)], fontsize=7)
    ax.set_yticks([layer * (n_q + gap) + (n_q - 1) / 2 for layer in range(layers)])
    ax.set_yticklabels([f"L{layer}" for layer in range(layers)], fontsize=7)
    ax.set_title(f"{chosen.name} attention, every layer and head", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["save_layer_heatmaps", "save_model_heatmaps"]
