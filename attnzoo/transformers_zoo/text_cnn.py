"""Text-CNN classifier (Kim 2014, "Convolutional Neural Networks for Sentence Classification").

Word embeddings, parallel 1-D convolutions of several window sizes (3, 4, 5) with ReLU,
max-over-time pooling of each feature map, dropout and a linear classifier:

    c_i = relu(w . x_{i:i+h-1} + b),   c_hat = max_i c_i,   logits = W [c_hat_1; ...] + b.

Padding never changes the result: padded embeddings are zeroed and only windows that lie on
real tokens enter the max (a text shorter than a window uses the one window at its start,
which is the zero-padding of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import (
    check_positive,
    check_prefix_mask,
    check_probability,
    check_rank,
    check_token_ids,
)


@dataclass
class TextCNNConfig:
    """Hyper-parameters of :class:`TextCNN`.

    Attributes:
        vocab_size: number of token ids.
        n_classes: number of labels.
        embed_dim: word-embedding width (300 in the paper, word2vec).
        window_sizes: widths ``h`` of the convolution windows, one bank of filters each.
        n_filters: feature maps per window size (100 in the paper).
        dropout: dropout on the pooled features (0.5 in the paper).
        pad_token_id: id of the padding token (the default mask is ``input_ids != pad``).
    """

    vocab_size: int
    n_classes: int
    embed_dim: int = 128
    window_sizes: tuple[int, ...] = (3, 4, 5)
    n_filters: int = 100
    dropout: float = 0.5
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        check_positive(self.vocab_size, "vocab_size")
        check_positive(self.n_classes, "n_classes")
        check_positive(self.embed_dim, "embed_dim")
        check_positive(self.n_filters, "n_filters")
        check_probability(self.dropout, "dropout")
        self.window_sizes = tuple(self.window_sizes)
        if not self.window_sizes:
            raise ValueError("`window_sizes` must name at least one window size, got ()")
        for size in self.window_sizes:
            check_positive(size, "window_sizes")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"`pad_token_id` must be in [0, {self.vocab_size}), got {self.pad_token_id}"
            )


class TextCNN(nn.Module):
    """Kim's CNN over a flat token sequence.

    Parameters: ``embeddings``, ``convs`` (one ``Conv1d(embed_dim, n_filters, h)`` per
    window size ``h``), ``classifier`` (Linear ``n_filters * len(window_sizes) -> n_classes``).
    """

    def __init__(self, config: TextCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(
            config.vocab_size, config.embed_dim, padding_idx=config.pad_token_id
        )
        self.convs = nn.ModuleList(
            nn.Conv1d(config.embed_dim, config.n_filters, size) for size in config.window_sizes
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_filters * len(config.window_sizes), config.n_classes)

    def features(self, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """The max-over-time features ``(batch, n_filters * len(window_sizes))``.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            mask: optional boolean prefix mask ``(batch, seq)``, True = real token;
                default ``input_ids != pad_token_id``.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, seq)")
        check_token_ids(input_ids, self.config.vocab_size, "input_ids")
        if mask is None:
            mask = input_ids != self.config.pad_token_id
        elif mask.shape != input_ids.shape:
            raise ValueError(
                f"`mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(mask.shape)}"
            )
        lengths = check_prefix_mask(mask, "mask")
        x = self.embeddings(input_ids).masked_fill(~mask.unsqueeze(-1), 0.0)
        # A text shorter than the widest window still gets one window per filter bank.
        shortfall = max(self.config.window_sizes) - x.shape[1]
        if shortfall > 0:
            x = F.pad(x, (0, 0, 0, shortfall))
        x = x.transpose(1, 2)  # (batch, embed_dim, seq): Conv1d convolves the last axis
        pooled = []
        for size, conv in zip(self.config.window_sizes, self.convs, strict=True):
            c = F.relu(conv(x))  # (batch, n_filters, seq - size + 1)
            # Window t is real when it ends inside the text, or is the first window of a
            # text shorter than ``size``; an empty text has no real window.
            last_start = (lengths - size).clamp(min=0).masked_fill(lengths == 0, -1)
            valid = torch.arange(c.shape[-1], device=c.device) <= last_start[:, None]
            # After ReLU every feature is >= 0, so zero-filling the other windows leaves the
            # max over the real ones unchanged (and gives 0 for an empty text).
            pooled.append(c.masked_fill(~valid.unsqueeze(1), 0.0).amax(dim=-1))
        return torch.cat(pooled, dim=-1)

    def forward(self, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """Classify each text.

        Args:
            input_ids: ``(batch, seq)`` token ids in ``[0, vocab_size)``.
            mask: optional boolean prefix mask ``(batch, seq)``, True = real token.

        Returns:
            logits ``(batch, n_classes)``.
        """
        return self.classifier(self.dropout(self.features(input_ids, mask)))


__all__ = ["TextCNN", "TextCNNConfig"]
