"""SNAIL: a Simple Neural AttentIve meta-Learner (Mishra et al. 2018).

SNAIL reads a task as a sequence: for few-shot classification, the labelled support examples
``(x_1, y_1), ..., (x_{T-1}, y_{T-1})`` followed by the unlabelled query ``(x_T, 0)``, and
predicts the query's class at the last step. It alternates two kinds of causal block, each of
which concatenates its output to its input, so that the features grow along the stack:

* :class:`TCBlock`, temporal convolution: a stack of :class:`DenseBlock` s, causal dilated 1-D
  convolutions of kernel size 2 with dilations 1, 2, 4, ... (WaveNet's gated activation
  ``tanh(conv_f(x)) * sigmoid(conv_g(x))``), so the receptive field covers the whole sequence
  with ``ceil(log2 T)`` layers: high-bandwidth access to a coarse past.
* :class:`AttentionBlock`: single-head causal soft attention (through
  :func:`~attnzoo.attention.functional.attend`), a pinpoint lookup into any earlier step: the
  query example compares itself with every support example and reads its label.

:class:`SNAIL` stacks them as the configurable list :attr:`SNAILConfig.layers`; the paper's
few-shot model is ``attention, tc, attention, tc, attention`` followed by a per-step linear
classifier (its 1x1 convolution). ``layers=("tc", "tc")`` is the no-attention ablation.

Shapes are batch first: ``(batch, seq, dim)``. Every block is causal: the output at step ``t``
depends on the inputs at steps ``<= t`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.functional import attend, padding_mask_to_attention_mask
from ..attention.normalizers import Normalizer
from ..attention.validation import (
    check_bool_mask,
    check_positive,
    check_probability,
    check_rank,
    check_size,
)
from .tasks.fewshot import check_labels, fewshot_task, nearest_support_accuracy
from .training import TrainConfig, fit

LAYER_KINDS = ("attention", "tc")


def tc_dilations(seq_len: int) -> list[int]:
    """Dilations ``1, 2, 4, ..., 2^(L-1)`` with ``L = max(1, ceil(log2 seq_len))``.

    With kernel size 2 the stack's receptive field is ``1 + sum(dilations) = 2^L >= seq_len``
    steps (the current one included), the smallest power-of-two stack seeing the whole
    sequence.
    """
    check_positive(seq_len, "seq_len")
    n_layers = max(1, math.ceil(math.log2(seq_len)))
    return [2**i for i in range(n_layers)]


def _check_steps(x: Tensor, mask: Tensor | None, dim: int, name: str) -> None:
    """Shared input checks of the blocks: ``x`` ``(batch, seq, dim)``, ``mask`` ``(batch, seq)``."""
    check_rank(x, 3, name, "(batch, seq, dim)")
    check_size(x, -1, dim, name, "dim")
    if mask is not None:
        check_bool_mask(mask, "mask")
        check_rank(mask, 2, "mask", "(batch, seq)")
        check_size(mask, 0, x.shape[0], "mask", f"the batch size of `{name}`")
        check_size(mask, 1, x.shape[1], "mask", f"the number of steps of `{name}`")


def _zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the features of padded steps ``(batch, seq, dim)``.

    A zeroed step looks to the next convolution exactly like its own causal zero padding, so a
    left-padded sequence gives the same outputs at its real steps as the unpadded one.
    """
    return x if mask is None else x * mask[..., None].to(x.dtype)


class DenseBlock(nn.Module):
    """One causal dilated convolution with a gated activation, concatenated to its input.

    ``out = concat(x, tanh(conv_f(x)) * sigmoid(conv_g(x)))`` with kernel size 2: the new
    features at step ``t`` see steps ``t`` and ``t - dilation``.

    Args:
        dim: input width.
        filters: number of new features (``D`` in the paper).
        dilation: distance between the two taps, >= 1.

    Parameters: ``filter_conv`` and ``gate_conv`` (``Conv1d(dim, filters, 2)``).
    """

    def __init__(self, dim: int, filters: int, dilation: int) -> None:
        super().__init__()
        check_positive(dim, "dim")
        check_positive(filters, "filters")
        check_positive(dilation, "dilation")
        self.dim, self.filters, self.dilation = dim, filters, dilation
        self.filter_conv = nn.Conv1d(dim, filters, kernel_size=2, dilation=dilation)
        self.gate_conv = nn.Conv1d(dim, filters, kernel_size=2, dilation=dilation)

    @property
    def out_dim(self) -> int:
        """Output width ``dim + filters``."""
        return self.dim + self.filters

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(batch, seq, dim)`` -> ``(batch, seq, dim + filters)``.

        Args:
            x: the input steps.
            mask: ``(batch, seq)`` boolean, True = real step; padded steps are zeroed in the
                output (and should be zero in ``x``, as the blocks leave them).
        """
        _check_steps(x, mask, self.dim, "x")
        # Left padding by one dilation makes the convolution causal and keeps the length.
        h = F.pad(x.transpose(1, 2), (self.dilation, 0))
        new = torch.tanh(self.filter_conv(h)) * torch.sigmoid(self.gate_conv(h))
        return _zero_padding(torch.cat([x, new.transpose(1, 2)], dim=-1), mask)


class TCBlock(nn.Module):
    """Temporal convolution block: dense blocks with dilations ``1, 2, 4, ...`` (see
    :func:`tc_dilations`), each adding ``filters`` features.

    Args:
        dim: input width.
        seq_len: the longest sequence the block must see whole; sets the number of layers
            ``L = max(1, ceil(log2 seq_len))``. Longer inputs are accepted, but the output at
            step ``t`` then sees only steps ``t - 2^L + 1 .. t``.
        filters: features added by each dense block.

    Parameters: ``layers.{i}`` (:class:`DenseBlock`).
    """

    def __init__(self, dim: int, seq_len: int, filters: int) -> None:
        super().__init__()
        check_positive(dim, "dim")
        self.dim, self.filters = dim, filters
        self.dilations = tc_dilations(seq_len)
        self.layers = nn.ModuleList(
            DenseBlock(dim + i * filters, filters, d) for i, d in enumerate(self.dilations)
        )

    @property
    def out_dim(self) -> int:
        """Output width ``dim + len(dilations) * filters``."""
        return self.dim + len(self.dilations) * self.filters

    @property
    def receptive_field(self) -> int:
        """Steps the output at ``t`` sees, ``t`` included: ``1 + sum(dilations)``."""
        return 1 + sum(self.dilations)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(batch, seq, dim)`` -> ``(batch, seq, out_dim)``; ``mask`` ``(batch, seq)``,
        True = real step, as in :meth:`DenseBlock.forward`."""
        _check_steps(x, mask, self.dim, "x")
        for layer in self.layers:
            x = layer(x, mask)
        return x


class AttentionBlock(nn.Module):
    """Single-head causal attention whose read is concatenated to the input.

    ``out = concat(x, attend(query(x), key(x), value(x), causal=True))``: step ``t`` attends
    to steps ``<= t`` with scores ``q_t . k_s / sqrt(key_size)``.

    Args:
        dim: input width.
        key_size: width of queries and keys.
        value_size: width of the read, the number of features added.
        normalizer: attention normaliser (registry name or callable), ``"softmax"`` in the
            paper; see :mod:`attnzoo.attention.normalizers`.
        dropout: dropout on the attention weights, in [0, 1).

    Parameters: ``query``, ``key`` (``Linear(dim, key_size)``), ``value``
    (``Linear(dim, value_size)``).
    """

    def __init__(
        self,
        dim: int,
        key_size: int,
        value_size: int,
        normalizer: str | Normalizer = "softmax",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive(dim, "dim")
        check_positive(key_size, "key_size")
        check_positive(value_size, "value_size")
        check_probability(dropout, "dropout")
        self.dim, self.key_size, self.value_size = dim, key_size, value_size
        self.normalizer, self.dropout = normalizer, dropout
        self.query = nn.Linear(dim, key_size)
        self.key = nn.Linear(dim, key_size)
        self.value = nn.Linear(dim, value_size)

    @property
    def out_dim(self) -> int:
        """Output width ``dim + value_size``."""
        return self.dim + self.value_size

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``(batch, seq, dim)`` -> ``(batch, seq, dim + value_size)``.

        Args:
            x: the input steps.
            mask: ``(batch, seq)`` boolean, True = real step: padded steps are never attended
                to, and are zeroed in the output. A step with nothing to attend to (a left
                padding step) reads zeros.
            return_weights: also return the attention weights ``(batch, seq, seq)``.
        """
        _check_steps(x, mask, self.dim, "x")
        # One head: (batch, 1, seq, size), the layout attend's masks broadcast against.
        q, k, v = (proj(x)[:, None] for proj in (self.query, self.key, self.value))
        result = attend(
            q,
            k,
            v,
            mask=None if mask is None else padding_mask_to_attention_mask(mask),
            causal=True,
            normalizer=self.normalizer,
            dropout=self.dropout,
            return_weights=return_weights,
            training=self.training,
        )
        read, weights = result if isinstance(result, tuple) else (result, None)
        out = _zero_padding(torch.cat([x, read[:, 0]], dim=-1), mask)
        return (out, weights[:, 0]) if weights is not None else out


@dataclass
class SNAILConfig:
    """Hyper-parameters of :class:`SNAIL` for N-way sequence classification.

    Attributes:
        feature_dim: width of an example's features (the paper feeds an embedding network's
            output here; see ``embed_dim``).
        n_way: number of classes: the width of each step's one-hot label slot and of the
            logits.
        seq_len: the longest episode, ``n_way * k_shot + 1`` for few-shot classification;
            sets the TC blocks' dilations so that they see the whole episode.
        layers: the block stack, each ``"attention"`` or ``"tc"``; the paper's few-shot
            model is ``("attention", "tc", "attention", "tc", "attention")``.
        key_size: query/key width of every attention block.
        value_size: read width (features added) of every attention block.
        tc_filters: features added by each dense block of a TC block.
        embed_dim: if set, the features first go through a learned ``Linear(feature_dim,
            embed_dim)`` + ReLU embedding (a stand-in for the paper's CNN); None: raw features.
        normalizer: the attention blocks' normaliser.
        dropout: attention dropout, in [0, 1).
    """

    feature_dim: int = 16
    n_way: int = 5
    seq_len: int = 6
    layers: tuple[str, ...] = ("attention", "tc", "attention", "tc", "attention")
    key_size: int = 32
    value_size: int = 16
    tc_filters: int = 16
    embed_dim: int | None = None
    normalizer: str = "softmax"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("feature_dim", "n_way", "seq_len", "key_size", "value_size", "tc_filters"):
            check_positive(getattr(self, name), name)
        if self.embed_dim is not None:
            check_positive(self.embed_dim, "embed_dim")
        check_probability(self.dropout, "dropout")
        self.layers = tuple(self.layers)
        if not self.layers:
            raise ValueError("`layers` must name at least one block, got ()")
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise ValueError(f"`layers` entries must be one of {LAYER_KINDS}, got {kind!r}")

    @property
    def input_dim(self) -> int:
        """Width of one input step: ``feature_dim + n_way``."""
        return self.feature_dim + self.n_way


@dataclass
class SNAILOutput:
    """What :meth:`SNAIL.forward` returns.

    Attributes:
        logits: ``(batch, seq, n_way)`` class logits at every step (zeros at padded steps);
            the prediction for the query is ``logits[:, -1]``.
        loss: cross-entropy of the last (query) step against ``labels``, when given.
    """

    logits: Tensor
    loss: Tensor | None = None


class SNAIL(nn.Module):
    """SNAIL for sequence classification (Mishra et al. 2018, few-shot architecture).

    Input step ``t`` is ``concat(features_t, one_hot(label_t))`` with the query's (last step's)
    label slot zero, as :func:`~attnzoo.transformers_zoo.tasks.fewshot.fewshot_task` lays it
    out. The blocks of ``config.layers`` each widen the features; a per-step linear
    ``classifier`` maps them to ``n_way`` logits.

    Parameters: ``embedding`` (when ``config.embed_dim``), ``blocks.{i}``
    (:class:`AttentionBlock` or :class:`TCBlock`), ``classifier``.
    """

    def __init__(self, config: SNAILConfig) -> None:
        super().__init__()
        self.config = config
        width = config.feature_dim
        self.embedding: nn.Module | None = None
        if config.embed_dim is not None:
            self.embedding = nn.Sequential(nn.Linear(width, config.embed_dim), nn.ReLU())
            width = config.embed_dim
        width += config.n_way
        blocks: list[AttentionBlock | TCBlock] = []
        for kind in config.layers:
            if kind == "attention":
                block: AttentionBlock | TCBlock = AttentionBlock(
                    width, config.key_size, config.value_size, config.normalizer, config.dropout
                )
            else:
                block = TCBlock(width, config.seq_len, config.tc_filters)
            blocks.append(block)
            width = block.out_dim
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(width, config.n_way)

    def forward(
        self, inputs: Tensor, mask: Tensor | None = None, labels: Tensor | None = None
    ) -> SNAILOutput:
        """Class logits at every step, and the query loss when ``labels`` is given.

        Args:
            inputs: ``(batch, seq, feature_dim + n_way)`` with ``seq <= config.seq_len``.
            mask: ``(batch, seq)`` boolean, True = real step. Pad on the left (the query must
                stay last); the real steps' outputs then equal those of the unpadded episode.
            labels: ``(batch,)`` long in ``[0, n_way)``, the query's class.

        Returns:
            :class:`SNAILOutput` with ``logits`` ``(batch, seq, n_way)``.
        """
        config = self.config
        _check_steps(inputs, mask, config.input_dim, "inputs")
        if inputs.shape[1] > config.seq_len:
            raise ValueError(
                f"`inputs` must have at most config.seq_len = {config.seq_len} steps (the TC "
                f"blocks' dilations are sized for it), got {inputs.shape[1]}"
            )
        if labels is not None:
            check_rank(labels, 1, "labels", "(batch,)")
            check_size(labels, 0, inputs.shape[0], "labels", "the batch size of `inputs`")
            check_labels(labels, config.n_way, "labels")

        x = _zero_padding(inputs, mask)
        if self.embedding is not None:
            features, one_hot = x.split([config.feature_dim, config.n_way], dim=-1)
            x = _zero_padding(torch.cat([self.embedding(features), one_hot], dim=-1), mask)
        for block in self.blocks:
            x = block(x, mask)
        logits = _zero_padding(self.classifier(x), mask)
        loss = None if labels is None else F.cross_entropy(logits[:, -1].float(), labels)
        return SNAILOutput(logits, loss)

    def query_attention(self, inputs: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """The query step's attention weights in every attention block, for inspection.

        Args:
            inputs: as in :meth:`forward`.
            mask: as in :meth:`forward`.

        Returns:
            one ``(batch, seq)`` tensor per attention block, in stack order: how much the last
            step attends to each step (itself included).
        """
        config = self.config
        _check_steps(inputs, mask, config.input_dim, "inputs")
        x = _zero_padding(inputs, mask)
        if self.embedding is not None:
            features, one_hot = x.split([config.feature_dim, config.n_way], dim=-1)
            x = _zero_padding(torch.cat([self.embedding(features), one_hot], dim=-1), mask)
        weights = []
        for block in self.blocks:
            if isinstance(block, AttentionBlock):
                x, w = block(x, mask, return_weights=True)
                weights.append(w[:, -1])
            else:
                x = block(x, mask)
        return weights


def _fewshot_accuracy(
    model: SNAIL, n_way: int, k_shot: int, feature_dim: int, noise: float, seed: int, n: int
) -> tuple[float, float]:
    """Query accuracy of ``model`` and of the nearest-support rule on ``n`` held-out episodes."""
    batch = fewshot_task(n, n_way, k_shot, feature_dim, torch.Generator().manual_seed(seed), noise)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(batch.inputs.to(device)).logits[:, -1]
    accuracy = float((logits.argmax(-1).cpu() == batch.query_labels).float().mean())
    return accuracy, nearest_support_accuracy(batch)


def train_fewshot(
    config: SNAILConfig,
    k_shot: int,
    steps: int,
    batch_size: int = 32,
    noise: float = 0.5,
    lr: float = 3e-3,
    seed: int = 0,
    eval_episodes: int = 2000,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[SNAIL, dict[str, float]]:
    """Train a SNAIL on fresh synthetic ``config.n_way``-way ``k_shot``-shot episodes.

    Every step draws a new batch of episodes (new prototypes), so the model cannot memorise
    classes and must learn to compare the query with the support. Accuracy is measured on
    ``eval_episodes`` held-out episodes drawn from a different seed.

    Returns:
        the trained model (in eval mode) and ``{"accuracy", "nearest_support_accuracy",
        "chance", "final_loss"}``.
    """
    seq_len = config.n_way * k_shot + 1
    if seq_len > config.seq_len:
        raise ValueError(
            f"`k_shot` episodes have n_way * k_shot + 1 = {seq_len} steps, more than "
            f"config.seq_len = {config.seq_len}"
        )
    torch.manual_seed(seed)
    model = SNAIL(config).to(device)
    generator = torch.Generator().manual_seed(seed)

    def batches(step: int):
        return fewshot_task(
            batch_size, config.n_way, k_shot, config.feature_dim, generator, noise
        ).to(device)

    def loss_fn(model: nn.Module, batch) -> Tensor:
        return model(batch.inputs, labels=batch.query_labels).loss

    history = fit(
        model,
        loss_fn,
        batches,
        TrainConfig(steps=steps, lr=lr, progress=progress, description="snail"),
    )
    accuracy, nearest = _fewshot_accuracy(
        model, config.n_way, k_shot, config.feature_dim, noise, seed + 10_000, eval_episodes
    )
    return model, {
        "accuracy": accuracy,
        "nearest_support_accuracy": nearest,
        "chance": 1.0 / config.n_way,
        "final_loss": history.mean_last(50),
    }


def run_snail_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train SNAIL and its no-attention ablation on synthetic 5-way 1-shot episodes.

    Both models see the same episodes; the ablation replaces the attention blocks by nothing
    (``layers=("tc", "tc")``, wider TC blocks to keep the parameter count within 2%).

    Returns:
        ``accuracy`` (SNAIL), ``tc_only_accuracy`` (ablation), ``nearest_support_accuracy``
        (the non-learned nearest-neighbour rule), ``chance``, ``final_loss`` (SNAIL), and the
        parameter counts ``params`` and ``tc_only_params``.
    """
    steps = 1000 if steps is None else steps
    snail_config = SNAILConfig(feature_dim=16, n_way=5, seq_len=6)
    tc_config = SNAILConfig(feature_dim=16, n_way=5, seq_len=6, layers=("tc", "tc"), tc_filters=26)
    model, metrics = train_fewshot(snail_config, 1, steps, seed=seed, progress=progress)
    tc_model, tc_metrics = train_fewshot(tc_config, 1, steps, seed=seed, progress=progress)
    return {
        **metrics,
        "tc_only_accuracy": tc_metrics["accuracy"],
        "params": float(sum(p.numel() for p in model.parameters())),
        "tc_only_params": float(sum(p.numel() for p in tc_model.parameters())),
    }


__all__ = [
    "SNAIL",
    "AttentionBlock",
    "DenseBlock",
    "SNAILConfig",
    "SNAILOutput",
    "TCBlock",
    "run_snail_demo",
    "tc_dilations",
    "train_fewshot",
]
