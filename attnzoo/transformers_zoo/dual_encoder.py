"""A CLIP-style dual encoder (Radford et al. 2021) and a synthetic image-caption set.

An image tower (:class:`ConvImageEncoder`, a small CNN, or :class:`ViTImageEncoder`, a
patch embedding and a pre-LN :class:`~attnzoo.transformers_zoo.stacks.TransformerEncoder`
reading a ``[CLS]`` token, Dosovitskiy et al. 2021) and a text tower (a
:class:`~attnzoo.transformers_zoo.sentence.SentenceEncoder` over any zoo encoder) are each
mapped by a linear projection into one space and L2-normalised. :class:`DualEncoder`
scores every image against every caption, ``exp(t) * <image_i, text_j>``, with CLIP's
learnable temperature ``t`` initialised to ``log(1 / 0.07)`` and clipped at ``log(100)``
so that the logits are never scaled by more than 100; :func:`clip_loss` is the symmetric
InfoNCE: cross-entropy over captions for each image and over images for each caption.

:func:`shape_captions` draws coloured shapes on noisy ``32 x 32`` canvases with captions
such as "a red circle"; :func:`recall_at_k` measures retrieval. :func:`train_clip` trains
both towers from scratch on it in about a minute of CPU.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_rank, check_size, check_tensor
from .sentence import SentenceEncoder, train_bert_tokenizer
from .stacks import StackConfig, TransformerEncoder

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "magenta": (0.9, 0.1, 0.9),
    "cyan": (0.1, 0.9, 0.9),
}
CAPTIONS = tuple(f"a {colour} {shape}" for shape in SHAPES for colour in COLOURS)
MAX_LOGIT_SCALE = math.log(100.0)


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> Tensor:
    """``(size, size)`` bool: the pixels of one shape centred at ``(cx, cy)``, radius ``r``."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dx, dy = (x - cx).abs(), (y - cy).abs()
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (dx <= 0.8 * r) & (dy <= 0.8 * r)
    if shape == "triangle":
        top = cy - r
        return (y >= top) & (y <= cy + r) & (dx <= (y - top) / 2)
    if shape == "cross":
        arm = r / 3
        return ((dx <= arm) & (dy <= r)) | ((dy <= arm) & (dx <= r))
    raise ValueError(f"`shape` must be one of {SHAPES}, got {shape!r}")


def shape_captions(
    n: int, size: int = 32, seed: int = 0, noise: float = 0.1
) -> tuple[Tensor, list[str], Tensor]:
    """``n`` images of one coloured shape each, with their captions.

    Each image is a grey canvas with Gaussian pixel noise and one shape
    (:data:`SHAPES`) of one colour (:data:`COLOURS`) at a random place and size.

    Args:
        n: images.
        size: canvas side (>= 16).
        seed: the draw.
        noise: std of the pixel noise.

    Returns:
        ``(images (n, 3, size, size) float32 in about [0, 1], captions, labels (n,))``;
        ``labels`` index :data:`CAPTIONS` (``len(CAPTIONS) == 24`` classes).
    """
    check_int(n, "n")
    check_int(size, "size", minimum=16)
    generator = random.Random(seed)
    torch_generator = torch.Generator().manual_seed(seed)
    images = 0.5 + noise * torch.randn(n, 3, size, size, generator=torch_generator)
    labels = torch.empty(n, dtype=torch.long)
    colours = list(COLOURS)
    for index in range(n):
        shape_index = generator.randrange(len(SHAPES))
        colour_index = generator.randrange(len(colours))
        r = generator.uniform(0.18, 0.32) * size
        cx = generator.uniform(r, size - 1 - r)
        cy = generator.uniform(r, size - 1 - r)
        pixels = _shape_mask(SHAPES[shape_index], size, cx, cy, r)
        colour = torch.tensor(COLOURS[colours[colour_index]]).view(3, 1)
        images[index][:, pixels] = colour + noise * torch.randn(
            3, int(pixels.sum()), generator=torch_generator
        )
        labels[index] = shape_index * len(colours) + colour_index
    return images, [CAPTIONS[int(label)] for label in labels], labels


class ConvImageEncoder(nn.Module):
    """A small CNN: three ``conv3x3 -> GroupNorm -> ReLU -> maxpool`` blocks, global average
    pooling (GroupNorm, unlike BatchNorm, acts the same in training and evaluation).
    ``(batch, channels, H, W) -> (batch, width)``.

    Args:
        channels: input channels.
        width: channels of the last block (the output width); the blocks have
            ``width / 4``, ``width / 2``, ``width``.
    """

    def __init__(self, channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels")
        self.width = check_int(width, "width", minimum=4)
        widths = [channels, width // 4, width // 2, width]
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.GroupNorm(min(8, c_out), c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, images: Tensor) -> Tensor:
        check_rank(images, 4, "images", "(batch, channels, H, W)")
        check_size(images, 1, self.channels, "images", "channels")
        return self.blocks(images).mean(dim=(2, 3))


class ViTImageEncoder(nn.Module):
    """A vision transformer: non-overlapping patches, linearly embedded, a ``[CLS]`` token,
    learned positions, a pre-LN :class:`TransformerEncoder`; returns the ``[CLS]`` state.
    ``(batch, channels, image_size, image_size) -> (batch, dim)``.

    Args:
        image_size: side of the (square) input.
        patch_size: side of a patch; divides ``image_size``.
        channels: input channels.
        dim, depth, heads: the transformer's width, layers and heads.
        dropout: the transformer's dropout.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        channels: int = 3,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int(image_size, "image_size")
        check_int(patch_size, "patch_size")
        if image_size % patch_size:
            raise ValueError(f"`patch_size` ({patch_size}) must divide `image_size` ({image_size})")
        self.image_size = image_size
        self.channels = check_int(channels, "channels")
        self.width = dim
        patches = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(0.02 * torch.randn(1, patches + 1, dim))
        config = StackConfig(
            dim=dim, heads=heads, depth=depth, activation="gelu", dropout=dropout, norm_first=True
        )
        self.encoder = TransformerEncoder(config)

    def forward(self, images: Tensor) -> Tensor:
        check_rank(images, 4, "images", "(batch, channels, H, W)")
        check_size(images, 1, self.channels, "images", "channels")
        check_size(images, 2, self.image_size, "images", "height")
        check_size(images, 3, self.image_size, "images", "width")
        patches = self.patch_embedding(images).flatten(2).transpose(1, 2)  # (batch, p, dim)
        cls = self.cls_token.expand(images.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self.positions
        return self.encoder(x).last_hidden_state[:, 0]


def clip_loss(logits_per_image: Tensor) -> Tensor:
    """Symmetric InfoNCE: the mean of the image->text and text->image cross-entropies,
    pair ``i`` being the target of row and column ``i``.

    Args:
        logits_per_image: ``(batch, batch)``, image ``i`` against caption ``j``.

    Returns:
        scalar.
    """
    check_rank(logits_per_image, 2, "logits_per_image", "(batch, batch)")
    if logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"`logits_per_image` must be square, got {tuple(logits_per_image.shape)}")
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    image_loss = F.cross_entropy(logits_per_image, targets)
    text_loss = F.cross_entropy(logits_per_image.T, targets)
    return (image_loss + text_loss) / 2


def recall_at_k(similarity: Tensor, relevant: Tensor, k: int = 1) -> float:
    """Fraction of queries with a relevant item among their ``k`` most similar.

    Args:
        similarity: ``(queries, candidates)``.
        relevant: ``(queries, candidates)`` bool, True where the candidate is a right answer
            (several may be, e.g. captions shared by several images).
        k: how many top candidates count.
    """
    check_rank(similarity, 2, "similarity", "(queries, candidates)")
    check_tensor(relevant, "relevant")
    if relevant.dtype != torch.bool or relevant.shape != similarity.shape:
        raise ValueError(
            f"`relevant` must be a bool tensor of shape {tuple(similarity.shape)}, "
            f"got {relevant.dtype} {tuple(relevant.shape)}"
        )
    check_int(k, "k")
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return float(relevant.gather(1, top).any(dim=1).float().mean())


@dataclass
class DualEncoderOutput:
    """:class:`DualEncoder` output.

    Attributes:
        logits_per_image: ``(images, texts)`` scaled cosine similarities.
        logits_per_text: its transpose ``(texts, images)``.
        image_embeds, text_embeds: L2-normalised ``(images, embed_dim)``,
            ``(texts, embed_dim)``.
        loss: :func:`clip_loss` when ``return_loss`` (needs as many images as texts).
    """

    logits_per_image: Tensor
    logits_per_text: Tensor
    image_embeds: Tensor
    text_embeds: Tensor
    loss: Tensor | None = None


class DualEncoder(nn.Module):
    """CLIP: two towers, linear projections into a shared space, a learned temperature.

    Args:
        image_encoder: ``(batch, C, H, W) -> (batch, image_dim)``.
        text_encoder: a :class:`SentenceEncoder` (``(batch, n)`` ids and mask ->
            ``(batch, text_dim)``); its own ``normalize`` is bypassed.
        image_dim, text_dim: the towers' output widths.
        embed_dim: the shared space.
        logit_scale_init: initial ``t`` (``exp(t)`` multiplies the cosines); CLIP's
            ``log(1 / 0.07)``. ``t`` is clipped at ``log(100)`` in :meth:`forward`.

    Parameters: ``image_encoder.*``, ``text_encoder.*``, ``image_projection``,
    ``text_projection`` (no bias, as CLIP), ``logit_scale``.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: SentenceEncoder,
        image_dim: int,
        text_dim: int,
        embed_dim: int = 64,
        logit_scale_init: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        if not isinstance(text_encoder, SentenceEncoder):
            raise TypeError(
                f"`text_encoder` must be a SentenceEncoder, got {type(text_encoder).__name__}"
            )
        if logit_scale_init > MAX_LOGIT_SCALE:
            raise ValueError(
                f"`logit_scale_init` must be <= log(100) = {MAX_LOGIT_SCALE:.4f}, "
                f"got {logit_scale_init}"
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = nn.Linear(check_int(image_dim, "image_dim"), embed_dim, bias=False)
        self.text_projection = nn.Linear(check_int(text_dim, "text_dim"), embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

    def scale(self) -> Tensor:
        """``exp(min(t, log 100))``: the multiplier of the cosines, at most 100."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def encode_image(self, images: Tensor) -> Tensor:
        """``(batch, C, H, W) -> (batch, embed_dim)``, L2-normalised."""
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``(batch, n)`` ids and mask (True = real token) -> ``(batch, embed_dim)``,
        L2-normalised."""
        pooled = self.text_encoder(input_ids, attention_mask, normalize=False)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_captions(self, captions: Sequence[str]) -> Tensor:
        """Tokenise with the text tower's tokenizer and :meth:`encode_text`."""
        ids, mask = self.text_encoder.tokenize(captions)
        device = self.logit_scale.device
        return self.encode_text(ids.to(device), mask.to(device))

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        return_loss: bool = False,
    ) -> DualEncoderOutput:
        """Score every image against every text.

        Args:
            images: ``(b_i, C, H, W)``.
            input_ids, attention_mask: ``(b_t, n)``.
            return_loss: also compute :func:`clip_loss` (``b_i == b_t``, pairs aligned).
        """
        image_embeds = self.encode_image(images)
        text_embeds = self.encode_text(input_ids, attention_mask)
        logits = self.scale() * image_embeds @ text_embeds.T
        loss = None
        if return_loss:
            if logits.shape[0] != logits.shape[1]:
                raise ValueError(
                    "return_loss needs as many images as texts (aligned pairs), got "
                    f"{logits.shape[0]} images and {logits.shape[1]} texts"
                )
            loss = clip_loss(logits)
        return DualEncoderOutput(logits, logits.T, image_embeds, text_embeds, loss)


def build_clip(image_tower: str = "cnn", embed_dim: int = 64, seed: int = 0) -> DualEncoder:
    """A small :class:`DualEncoder` for :func:`shape_captions`: the given image tower
    (``"cnn"`` or ``"vit"``) and a 1-layer, 64-wide BERT text tower with mean pooling over
    a WordPiece vocabulary of the captions."""
    from .bert import BertConfig, BertModel

    torch.manual_seed(seed)
    if image_tower == "cnn":
        image_encoder: nn.Module = ConvImageEncoder(width=64)
    elif image_tower == "vit":
        image_encoder = ViTImageEncoder(image_size=32, patch_size=8, dim=64, depth=2, heads=4)
    else:
        raise ValueError(f"`image_tower` must be 'cnn' or 'vit', got {image_tower!r}")
    tokenizer = train_bert_tokenizer(list(CAPTIONS), vocab_size=60)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    text = SentenceEncoder(BertModel(config, add_pooling_layer=False), tokenizer, "mean")
    return DualEncoder(image_encoder, text, 64, 64, embed_dim)


@torch.no_grad()
def evaluate_retrieval(model: DualEncoder, n: int = 240, seed: int = 10_000) -> dict[str, float]:
    """Recall@1 on ``n`` fresh images: image->caption among the 24 captions (chance 1/24)
    and caption->image among the ``n`` images (a hit is any image of that caption;
    chance about 1/24)."""
    was_training = model.training
    model.eval()
    images, _, labels = shape_captions(n, seed=seed)
    image_embeds = model.encode_image(images)
    text_embeds = model.encode_captions(list(CAPTIONS))
    similarity = image_embeds @ text_embeds.T  # (n, 24)
    relevant = labels.unsqueeze(1) == torch.arange(len(CAPTIONS)).unsqueeze(0)
    model.train(was_training)
    return {
        "image_to_text_r1": recall_at_k(similarity, relevant, 1),
        "text_to_image_r1": recall_at_k(similarity.T, relevant.T, 1),
        "chance": 1 / len(CAPTIONS),
    }


def train_clip(
    image_tower: str = "cnn",
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 2e-3,
    progress: bool = False,
    seed: int = 0,
) -> tuple[DualEncoder, dict[str, float]]:
    """Train :func:`build_clip` with :func:`clip_loss` on fresh :func:`shape_captions`
    batches (``steps`` of ``batch_size`` pairs).

    Returns:
        the model and ``{"before_image_to_text_r1", "image_to_text_r1",
        "text_to_image_r1", "chance", "loss_initial", "loss_final", "logit_scale"}``.
    """
    from .training import TrainConfig, fit

    model = build_clip(image_tower, seed=seed)
    before = evaluate_retrieval(model)["image_to_text_r1"]

    def batch(step: int) -> tuple[Tensor, Tensor, Tensor]:
        images, captions, _ = shape_captions(batch_size, seed=seed * 1_000_003 + step)
        ids, mask = model.text_encoder.tokenize(captions)
        return images, ids, mask

    def loss_fn(module: nn.Module, item: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        images, ids, mask = item
        return module(images, ids, mask, return_loss=True).loss  # type: ignore[no-any-return]

    history = fit(
        model,
        loss_fn,
        batch,
        TrainConfig(steps=steps, lr=lr, progress=progress, description=f"clip-{image_tower}"),
    )
    metrics = {"before_image_to_text_r1": before, **evaluate_retrieval(model)}
    metrics.update(
        loss_initial=sum(history.losses[:10]) / 10,
        loss_final=history.mean_last(20),
        logit_scale=float(model.scale().detach()),
    )
    return model, metrics


def run_clip_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train the CNN and the ViT dual encoders on coloured shapes; held-out recall@1."""
    metrics: dict[str, float] = {}
    for tower in ("cnn", "vit"):
        _, result = train_clip(tower, steps or 400, progress=progress, seed=seed)
        metrics.update({f"{tower}_{key}": value for key, value in result.items()})
    return metrics


__all__ = [
    "CAPTIONS",
    "COLOURS",
    "MAX_LOGIT_SCALE",
    "SHAPES",
    "ConvImageEncoder",
    "DualEncoder",
    "DualEncoderOutput",
    "ViTImageEncoder",
    "build_clip",
    "clip_loss",
    "evaluate_retrieval",
    "recall_at_k",
    "run_clip_demo",
    "shape_captions",
    "train_clip",
]
