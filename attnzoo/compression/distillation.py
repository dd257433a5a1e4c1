"""Knowledge distillation: Hinton soft targets, DistilBERT's triple loss, TinyBERT's layer
losses, and one :class:`Distiller` loop that pairs any teacher with any student.

Temperature convention: :func:`soft_target_loss` is ``T^2 * KL(softmax(t / T) ||
softmax(s / T))``, averaged over the rows (positions). Hinton et al. 2015 multiply by
``T^2`` so that the soft term's gradients keep their size when ``T`` changes (they scale as
``1 / T^2``), which lets the soft and hard terms be mixed with a weight that does not depend
on ``T``; DistilBERT does the same. TinyBERT and TextBrewer's defaults leave the factor out,
so their loss at ``T`` equals this one divided by ``T^2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_bool_mask, check_int, check_positive, check_tensor
from ..transformers_zoo.training import TrainConfig, TrainHistory, fit


def _check_logits(student: Tensor, teacher: Tensor) -> None:
    check_tensor(student, "student_logits")
    check_tensor(teacher, "teacher_logits")
    if student.shape != teacher.shape:
        raise ValueError(
            f"`student_logits` must have the shape of `teacher_logits` {tuple(teacher.shape)}, "
            f"got {tuple(student.shape)}"
        )


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32 at least (half-precision logits lose the small KL terms)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _rows(x: Tensor, mask: Tensor | None, name: str) -> Tensor:
    """``(..., d)`` -> ``(rows, d)``, keeping rows where ``mask`` ``(...)`` is True."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    check_bool_mask(mask, "mask")
    if mask.shape != x.shape[:-1]:
        raise ValueError(
            f"`mask` must have shape {tuple(x.shape[:-1])} (the leading axes of `{name}`), "
            f"got {tuple(mask.shape)}"
        )
    return x[mask]


def soft_target_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton et al.'s soft-target loss, ``T^2 * KL(p_teacher^T || p_student^T)`` per row.

    Args:
        student_logits, teacher_logits: ``(..., classes)``, same shape.
        temperature: ``T > 0``.
        mask: optional ``(...)`` boolean, True = rows that count (real tokens).

    Returns:
        scalar: the mean over the counted rows (see the module docstring for the ``T^2``).
    """
    _check_logits(student_logits, teacher_logits)
    check_positive(temperature, "temperature")
    s = _wide(_rows(student_logits, mask, "student_logits")) / temperature
    t = _wide(_rows(teacher_logits, mask, "teacher_logits")) / temperature
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0
    kl = F.kl_div(
        F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True
    )
    return kl * temperature**2


def hinton_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """``alpha * soft_target_loss + (1 - alpha) * cross_entropy(student, labels)``.

    Args:
        student_logits, teacher_logits: ``(batch, classes)``.
        labels: ``(batch,)`` class ids.
        temperature: soft-target temperature.
        alpha: weight of the soft term, in ``[0, 1]``.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}")
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    hard = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))
    return alpha * soft + (1 - alpha) * hard


def masked_cosine_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """``mean(1 - cos(student, teacher))`` over the real tokens (DistilBERT's ``L_cos``).

    Args:
        student, teacher: ``(batch, n, dim)`` hidden states of the same width.
        mask: ``(batch, n)`` boolean, True = real token; None = all.
    """
    check_tensor(student, "student")
    check_tensor(teacher, "teacher")
    if student.shape != teacher.shape:
        raise ValueError(
            f"`student` must have the shape of `teacher` {tuple(teacher.shape)}, got "
            f"{tuple(student.shape)} (project the student first when widths differ)"
        )
    s, t = _rows(student, mask, "student"), _rows(teacher, mask, "teacher")
    return (1 - F.cosine_similarity(_wide(s), _wide(t), dim=-1)).mean()


@dataclass
class DistilBertLoss:
    """DistilBERT's triple loss (Sanh et al. 2019): ``w_ce * L_ce + w_mlm * L_mlm + w_cos *
    L_cos``, the paper's weights 5, 2, 1 and ``T = 2`` by default.

    ``L_ce`` is :func:`soft_target_loss` over the real tokens' vocabulary logits, ``L_mlm``
    the masked-LM cross-entropy (label -100 = not predicted), ``L_cos``
    :func:`masked_cosine_loss` of the last hidden states over the real tokens.
    """

    temperature: float = 2.0
    ce_weight: float = 5.0
    mlm_weight: float = 2.0
    cos_weight: float = 1.0

    def __call__(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        student_hidden: Tensor,
        teacher_hidden: Tensor,
        attention_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Args: logits ``(batch, n, vocab)``, labels ``(batch, n)``, hidden states
        ``(batch, n, dim)``, ``attention_mask`` ``(batch, n)`` boolean (True = real).

        Returns:
            ``{"loss", "ce", "mlm", "cos"}`` scalars (``loss`` is the weighted sum).
        """
        ce = soft_target_loss(student_logits, teacher_logits, self.temperature, attention_mask)
        mlm = F.cross_entropy(
            _wide(student_logits.reshape(-1, student_logits.shape[-1])),
            labels.reshape(-1),
            ignore_index=-100,
        )
        cos = masked_cosine_loss(student_hidden, teacher_hidden, attention_mask)
        loss = self.ce_weight * ce + self.mlm_weight * mlm + self.cos_weight * cos
        return {"loss": loss, "ce": ce, "mlm": mlm, "cos": cos}


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """TinyBERT's uniform map ``g(m) = m * N / M`` over hidden-state indices (0 = the
    embeddings, ``m`` = output of layer ``m``): student ``M`` layers, teacher ``N``.

    Returns:
        ``{student index: teacher index}`` for ``m = 0 .. M``.
    """
    check_int(student_layers, "student_layers")
    check_int(teacher_layers, "teacher_layers")
    if teacher_layers % student_layers:
        raise ValueError(
            f"`teacher_layers` ({teacher_layers}) must be a multiple of `student_layers` "
            f"({student_layers}) for the uniform map; pass an explicit layer map instead"
        )
    step = teacher_layers // student_layers
    return {m: m * step for m in range(student_layers + 1)}


TINYBERT_ATTENTION_MAPS = ("scores", "weights")


class TinyBertLoss(nn.Module):
    """TinyBERT's intermediate-layer losses (Jiao et al. 2020): MSE between mapped hidden
    states (and embeddings), through learned projections when the widths differ, plus MSE
    between mapped attention maps, summed over the mapped layers.

    Attention maps, chosen by ``attention``:

    * ``"scores"`` (the paper's): the unnormalised ``Q K^T / sqrt(d_k)`` of every head, as
      :func:`~attnzoo.compression.attention_scores.capture_attention_scores` records them.
      Padding follows the TinyBERT code: entries whose KEY is padding are set to zero in
      both maps (their code adds -10000 there and then zeroes every entry <= -100; zeroing
      by the mask gives the same on masked keys and leaves a very negative real score
      alone), and the mean runs over all ``batch * heads * n * n`` entries, padded query
      rows included.
    * ``"weights"``: the attention weights the zoo models return with
      ``output_attentions=True`` (masked keys are already zero); the mean runs over real
      query-key pairs only.

    The hidden-state loss counts real tokens only in both cases.

    Args:
        student_dim, teacher_dim: hidden widths.
        layer_map: ``{student hidden index: teacher hidden index}`` (0 = embeddings), e.g.
            :func:`uniform_layer_map`; attention maps use the pairs with index >= 1 (layer
            ``m`` -> ``attentions[m - 1]``).
        attention_weight, hidden_weight: weights of the two terms.
        attention: ``"scores"`` or ``"weights"``, what the attention maps passed to
            :meth:`forward` are.

    Parameters: ``projection`` (``W_h``, Linear ``student_dim -> teacher_dim``, no bias) for
    the layers' hidden states and ``embedding_projection`` (``W_e``, the same shape) for the
    embeddings (index 0), as in the paper; neither when the widths agree.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Mapping[int, int],
        attention_weight: float = 1.0,
        hidden_weight: float = 1.0,
        attention: str = "scores",
    ) -> None:
        super().__init__()
        check_int(student_dim, "student_dim")
        check_int(teacher_dim, "teacher_dim")
        if not layer_map:
            raise ValueError("`layer_map` must pair at least one student and teacher layer")
        if attention not in TINYBERT_ATTENTION_MAPS:
            raise ValueError(
                f"`attention` must be one of {TINYBERT_ATTENTION_MAPS}, got {attention!r}"
            )
        self.layer_map = dict(layer_map)
        self.attention = attention
        self.attention_weight, self.hidden_weight = attention_weight, hidden_weight
        widths_differ = student_dim != teacher_dim
        self.projection = nn.Linear(student_dim, teacher_dim, bias=False) if widths_differ else None
        self.embedding_projection = (
            nn.Linear(student_dim, teacher_dim, bias=False) if widths_differ else None
        )

    def forward(
        self,
        student_hidden: Sequence[Tensor],
        teacher_hidden: Sequence[Tensor],
        student_attentions: Sequence[Tensor] | None = None,
        teacher_attentions: Sequence[Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Args: hidden states: sequences of ``(batch, n, dim)`` (embeddings first);
        attentions: sequences of ``(batch, heads, n, n)`` scores or weights (see
        ``attention``; heads must agree); ``mask`` ``(batch, n)`` boolean, True = real token.

        Returns:
            ``{"loss", "hidden", "attention"}`` scalars.
        """
        if mask is not None:
            check_bool_mask(mask, "mask")
            tokens = student_hidden[0].shape[:2]
            if mask.shape != tokens:
                raise ValueError(
                    f"`mask` must have shape {tuple(tokens)} (batch, n) of the hidden states, "
                    f"got {tuple(mask.shape)}"
                )
        hidden = student_hidden[0].new_zeros(())
        attention = student_hidden[0].new_zeros(())
        for s, t in self.layer_map.items():
            if not (0 <= s < len(student_hidden) and 0 <= t < len(teacher_hidden)):
                raise ValueError(
                    f"`layer_map` pair {s}->{t} is out of range: {len(student_hidden)} student "
                    f"and {len(teacher_hidden)} teacher hidden states"
                )
            h = student_hidden[s]
            projection = self.embedding_projection if s == 0 else self.projection
            if projection is not None:
                h = projection(h)
            hidden = hidden + _masked_mse(h, teacher_hidden[t], mask)
            if s >= 1 and student_attentions is not None and teacher_attentions is not None:
                a_s, a_t = student_attentions[s - 1], teacher_attentions[t - 1]
                if a_s.shape != a_t.shape:
                    raise ValueError(
                        f"student attention {tuple(a_s.shape)} and teacher attention "
                        f"{tuple(a_t.shape)} must have the same shape (same number of heads)"
                    )
                attention = attention + self._attention_mse(a_s, a_t, mask)
        loss = self.hidden_weight * hidden + self.attention_weight * attention
        return {"loss": loss, "hidden": hidden, "attention": attention}

    def _attention_mse(self, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        """MSE of two ``(batch, heads, n, n)`` maps, padding handled as the class says."""
        if self.attention == "weights":
            pair = None if mask is None else mask[:, None, :, None] & mask[:, None, None, :]
            return _masked_mse(student[..., None], teacher[..., None], pair)
        if mask is not None:
            keys = student.shape[:1] + student.shape[-1:]
            if mask.shape != keys:
                raise ValueError(
                    f"`mask` must have shape {tuple(keys)} (batch, n_keys) of the attention "
                    f"maps, got {tuple(mask.shape)}"
                )
            real_key = mask[:, None, None, :]
            student = student.masked_fill(~real_key, 0.0)
            teacher = teacher.masked_fill(~real_key, 0.0)
        return _masked_mse(student, teacher, None)


def _masked_mse(a: Tensor, b: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over the rows of ``(..., d)`` where ``mask`` ``(...)`` is True."""
    if a.shape != b.shape:
        raise ValueError(f"shapes {tuple(a.shape)} and {tuple(b.shape)} must agree")
    if mask is not None:
        mask = mask.expand(a.shape[:-1])
    return F.mse_loss(_wide(_rows(a, mask, "student")), _wide(_rows(b, mask, "teacher")))


Objective = Callable[[Any, Any, Any], Tensor]
"""``(student_output, teacher_output, batch) -> scalar loss``."""


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch[0])`` for a tuple/list batch ``(inputs, labels, ...)``,
    ``model(**batch)`` without its ``"labels"`` for a dict, else ``model(batch)``."""
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k != "labels"})
    return model(batch)


def logits_of(output: Any) -> Tensor:
    """A tensor output itself, else its ``logits`` attribute (zoo and Hugging Face heads)."""
    return output if isinstance(output, Tensor) else output.logits


def labels_of(batch: Any) -> Tensor:
    """``batch[1]`` of a tuple/list batch, else ``batch["labels"]``."""
    return batch[1] if isinstance(batch, (tuple, list)) else batch["labels"]


@dataclass
class HintonObjective:
    """:func:`hinton_loss` as a :class:`Distiller` objective (logits via :func:`logits_of`,
    labels via :func:`labels_of`)."""

    temperature: float = 4.0
    alpha: float = 0.9

    def __call__(self, student_out: Any, teacher_out: Any, batch: Any) -> Tensor:
        return hinton_loss(
            logits_of(student_out),
            logits_of(teacher_out),
            labels_of(batch),
            self.temperature,
            self.alpha,
        )


class Distiller:
    """Train ``student`` to match ``teacher`` with any objective.

    The teacher runs in eval mode under ``torch.no_grad()``; the student (and the
    ``trainable`` modules of the objective, e.g. a :class:`TinyBertLoss` projection) are
    optimised by :func:`~attnzoo.transformers_zoo.training.fit`.

    Args:
        teacher: the trained model.
        student: the model to train.
        objective: ``(student_output, teacher_output, batch) -> loss``, e.g.
            :class:`HintonObjective`.
        forward: ``(model, batch) -> output`` for both models; default
            :func:`default_forward`.
        trainable: extra modules trained with the student (learned projections).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        objective: Objective,
        forward: Callable[[nn.Module, Any], Any] = default_forward,
        trainable: nn.Module | None = None,
    ) -> None:
        for name, module in (("teacher", teacher), ("student", student)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"`{name}` must be an nn.Module, got {type(module).__name__}")
        if not callable(objective):
            raise TypeError(f"`objective` must be callable, got {type(objective).__name__}")
        self.teacher, self.student = teacher, student
        self.objective, self.forward = objective, forward
        self.trained = nn.ModuleDict({"student": student})
        if trainable is not None:
            self.trained["extra"] = trainable

    def loss(self, batch: Any) -> Tensor:
        """The objective on one batch (teacher without gradients)."""
        self.teacher.eval()
        with torch.no_grad():
            teacher_out = self.forward(self.teacher, batch)
        return self.objective(self.forward(self.student, batch), teacher_out, batch)

    def fit(
        self, batches: Iterator[Any] | Callable[[int], Any], config: TrainConfig | None = None
    ) -> TrainHistory:
        """Train for ``config.steps`` steps on ``batches`` (see :func:`fit`)."""
        return fit(self.trained, lambda _, batch: self.loss(batch), batches, config)


__all__ = [
    "TINYBERT_ATTENTION_MAPS",
    "DistilBertLoss",
    "Distiller",
    "HintonObjective",
    "TinyBertLoss",
    "default_forward",
    "hinton_loss",
    "labels_of",
    "logits_of",
    "masked_cosine_loss",
    "soft_target_loss",
    "uniform_layer_map",
]
