"""Sentence-BERT (Reimers and Gurevych 2019): sentence embeddings from any zoo encoder.

A :class:`SentenceEncoder` runs an encoder that returns ``last_hidden_state``
``(batch, n, dim)`` (:class:`~attnzoo.transformers_zoo.BertModel`, RoBERTa, DistilBERT, ...)
and pools the token states into one vector per sentence with :func:`pool`:

* ``"cls"``: the first real token; ``"lasttoken"``: the last real token;
* ``"mean"``: the mean over real tokens; ``"mean_sqrt_len"``: their sum over
  ``sqrt(length)``; ``"max"``: the element-wise maximum over real tokens;
* ``"weightedmean"``: a mean whose weights grow linearly with the position (1, 2, ...,
  counted from the first real token), as SGPT weights later tokens more;
* ``"masked"``: the mean of the states at ``[MASK]`` tokens (the prompt-based embedding of
  PromptBERT: "This sentence : '...' means [MASK] .").

The first six equal sentence-transformers' ``Pooling`` on the same states and mask. A
row with no real token pools to zeros, never NaN. :meth:`SentenceEncoder.encode` embeds a
list of texts in batches behind a tqdm bar; :func:`cos_sim` and :func:`semantic_search`
rank a corpus by cosine similarity, and :class:`EmbeddingIndex` is the
"encode once, query many times" use of the embeddings. The training objectives are in
:mod:`attnzoo.transformers_zoo.sentence_losses`.

``SentenceEncoder.from_pretrained(dir)`` reads a sentence-transformers directory
(``config.json``, ``model.safetensors``, ``tokenizer.json``, and ``1_Pooling/config.json``,
``modules.json``, ``sentence_bert_config.json`` where present) and embeds exactly as
sentence-transformers does, without network access.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attention.validation import check_int, check_rank, check_tensor
from .checkpoints import hf_attention_mask

POOLING_MODES = ("cls", "lasttoken", "mean", "mean_sqrt_len", "max", "weightedmean", "masked")

# sentence-transformers' 1_Pooling/config.json flags -> the modes here.
_ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}

_Default = TypeVar("_Default", int, None)


def check_pooling_mode(mode: object) -> str:
    """Return ``mode`` if it is one of :data:`POOLING_MODES`, else raise ``ValueError``."""
    if mode not in POOLING_MODES:
        raise ValueError(f"`mode` must be one of {POOLING_MODES}, got {mode!r}")
    return str(mode)


def pool(
    token_embeddings: Tensor,
    attention_mask: Tensor | None = None,
    mode: str = "mean",
    input_ids: Tensor | None = None,
    mask_token_id: int | None = None,
) -> Tensor:
    """Pool token states into one vector per sequence.

    Args:
        token_embeddings: ``(batch, n, dim)`` floating point.
        attention_mask: ``(batch, n)`` bool or integer 0/1, True/1 = real token (left or
            right padding); None = all real.
        mode: one of :data:`POOLING_MODES` (see the module docstring).
        input_ids: ``(batch, n)``; needed by ``"masked"`` to find the ``[MASK]`` tokens.
        mask_token_id: the ``[MASK]`` id; needed by ``"masked"``.

    Returns:
        ``(batch, dim)`` in the dtype of ``token_embeddings``; zeros for a row without real
        tokens.

    Raises:
        ValueError: unknown ``mode``, wrong shapes, or (``"masked"``) a row without a real
            ``[MASK]`` token.
        TypeError: a non-tensor, an integer ``token_embeddings`` or a float mask.
    """
    check_pooling_mode(mode)
    check_rank(token_embeddings, 3, "token_embeddings", "(batch, n, dim)")
    if not token_embeddings.is_floating_point():
        raise TypeError(
            f"`token_embeddings` must be floating point, got dtype {token_embeddings.dtype}"
        )
    batch, n, _ = token_embeddings.shape
    if attention_mask is None:
        mask = torch.ones(batch, n, dtype=torch.bool, device=token_embeddings.device)
    else:
        mask = hf_attention_mask(attention_mask, (batch, n))
    has_token = mask.any(dim=1, keepdim=True)  # (batch, 1)
    if mode in ("cls", "lasttoken"):
        positions = torch.arange(n, device=mask.device).expand(batch, n)
        if mode == "cls":
            index = torch.where(mask, positions, n).amin(dim=1)
        else:
            index = torch.where(mask, positions, -1).amax(dim=1)
        index = index.clamp(0, n - 1)
        picked = token_embeddings[torch.arange(batch, device=mask.device), index]
        return picked * has_token.to(picked.dtype)
    if mode == "max":
        filled = token_embeddings.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return filled.amax(dim=1).masked_fill(~has_token, 0.0)
    if mode == "masked":
        if input_ids is None or mask_token_id is None:
            raise ValueError("mode='masked' needs `input_ids` and `mask_token_id`")
        check_tensor(input_ids, "input_ids")
        if input_ids.shape != (batch, n):
            raise ValueError(
                f"`input_ids` must have shape {(batch, n)}, got {tuple(input_ids.shape)}"
            )
        mask = mask & (input_ids == mask_token_id)
        missing = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if missing:
            raise ValueError(
                f"mode='masked' needs a real [MASK] token (id {mask_token_id}) in every row; "
                f"rows {missing} have none"
            )
    # Sums in float32 at least, as half-precision sums over long sequences lose digits.
    accumulate = torch.promote_types(token_embeddings.dtype, torch.float32)
    weights = mask.to(accumulate)
    if mode == "weightedmean":
        first = mask.to(torch.int32).argmax(dim=1, keepdim=True)
        positions = torch.arange(1, n + 1, device=mask.device, dtype=accumulate).unsqueeze(0)
        weights = weights * (positions - first.to(accumulate))
    total = (token_embeddings.to(accumulate) * weights.unsqueeze(-1)).sum(dim=1)
    denominator = weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
    if mode == "mean_sqrt_len":
        denominator = denominator.sqrt()
    return (total / denominator).to(token_embeddings.dtype)


class Pooling(nn.Module):
    """Module form of :func:`pool`: ``(batch, n, dim)``, mask ``(batch, n)`` ->
    ``(batch, dim)``.

    Args:
        mode: one of :data:`POOLING_MODES`.
        mask_token_id: the ``[MASK]`` id, for ``"masked"``.
    """

    def __init__(self, mode: str = "mean", mask_token_id: int | None = None) -> None:
        super().__init__()
        self.mode = check_pooling_mode(mode)
        if mode == "masked" and mask_token_id is None:
            raise ValueError("mode='masked' needs `mask_token_id`")
        self.mask_token_id = mask_token_id

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def forward(
        self,
        token_embeddings: Tensor,
        attention_mask: Tensor | None = None,
        input_ids: Tensor | None = None,
    ) -> Tensor:
        return pool(token_embeddings, attention_mask, self.mode, input_ids, self.mask_token_id)


def cos_sim(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of ``a`` ``(m, dim)`` with every row of ``b``
    ``(k, dim)``: ``(m, k)``. A zero row has similarity 0 with everything."""
    check_rank(a, 2, "a", "(m, dim)")
    check_rank(b, 2, "b", "(k, dim)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`a` and `b` must have the same dim, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def semantic_search(
    query_embeddings: Tensor, corpus_embeddings: Tensor, top_k: int = 5
) -> tuple[Tensor, Tensor]:
    """The ``top_k`` corpus entries closest to each query by cosine similarity.

    Args:
        query_embeddings: ``(q, dim)`` (or ``(dim,)`` for one query).
        corpus_embeddings: ``(c, dim)``.
        top_k: hits per query; at most ``c``.

    Returns:
        ``(scores, indices)``, each ``(q, min(top_k, c))``, best first.
    """
    check_tensor(query_embeddings, "query_embeddings")
    if query_embeddings.dim() == 1:
        query_embeddings = query_embeddings.unsqueeze(0)
    check_int(top_k, "top_k")
    similarity = cos_sim(query_embeddings, corpus_embeddings)
    scores, indices = similarity.topk(min(top_k, similarity.shape[1]), dim=1)
    return scores, indices


def _model_class(model_type: str) -> Any:
    # Imported here: each family module is only needed for its own checkpoints.
    if model_type == "bert":
        from .bert import BertModel

        return BertModel
    if model_type == "roberta":
        from .roberta import RobertaModel

        return RobertaModel
    if model_type == "distilbert":
        from .distilbert import DistilBertModel

        return DistilBertModel
    raise ValueError(
        f"config.json `model_type` must be 'bert', 'roberta' or 'distilbert', got {model_type!r}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


class SentenceEncoder(nn.Module):
    """A bi-encoder: a zoo encoder, a pooling, optionally L2 normalisation.

    Args:
        encoder: a module called as ``encoder(input_ids, attention_mask=mask)`` that returns
            an object with ``last_hidden_state`` ``(batch, n, dim)``.
        tokenizer: a ``tokenizers.Tokenizer`` that adds the model's special tokens (needed
            by :meth:`tokenize` / :meth:`encode`, not by :meth:`forward`).
        pooling: one of :data:`POOLING_MODES`.
        normalize: L2-normalise the embeddings in :meth:`forward` (as a model with a
            sentence-transformers ``Normalize`` module does).
        max_length: tokens kept per text, special tokens included (the tokenizer's
            truncation is set to it).
        pad_token_id: the padding id; default the tokenizer's ``[PAD]`` (or ``<pad>``), else 0.
        mask_token_id: the ``[MASK]`` id for ``pooling="masked"``; default the tokenizer's.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any = None,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 128,
        pad_token_id: int | None = None,
        mask_token_id: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"`encoder` must be an nn.Module, got {type(encoder).__name__}")
        check_pooling_mode(pooling)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.normalize = bool(normalize)
        self.max_length = check_int(max_length, "max_length")
        if tokenizer is not None:
            # The tokenizer truncates, so that a long text keeps its closing [SEP].
            tokenizer.enable_truncation(max_length=max_length)
        self.pad_token_id = (
            pad_token_id if pad_token_id is not None else self._token_id(("[PAD]", "<pad>"), 0)
        )
        if mask_token_id is None:
            mask_token_id = self._token_id(("[MASK]", "<mask>"), None)
        self.pooling = Pooling(pooling, mask_token_id)

    def _token_id(self, tokens: Sequence[str], default: _Default) -> int | _Default:
        if self.tokenizer is None:
            return default
        for token in tokens:
            found = self.tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
        return default

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        normalize: bool | None = None,
    ) -> Tensor:
        """Embed token ids.

        Args:
            input_ids: ``(batch, n)``.
            attention_mask: ``(batch, n)`` bool or 0/1, True = real token; None = no padding.
            normalize: override the module's ``normalize``.

        Returns:
            ``(batch, dim)`` sentence embeddings.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        out = self.encoder(input_ids, attention_mask=attention_mask)
        hidden = getattr(out, "last_hidden_state", None)
        if not isinstance(hidden, Tensor):
            raise TypeError(
                "`encoder` must return an object with a `last_hidden_state` tensor, "
                f"got {type(out).__name__}"
            )
        embeddings = self.pooling(hidden, attention_mask, input_ids)
        if self.normalize if normalize is None else normalize:
            embeddings = F.normalize(embeddings, dim=-1)
        return embeddings

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokenise and right-pad ``texts``: ``(ids (batch, n) int64, mask (batch, n) bool)``.

        Raises:
            ValueError: no tokenizer, or an empty list.
            TypeError: ``texts`` is one string or holds a non-string.
        """
        if self.tokenizer is None:
            raise ValueError("this SentenceEncoder has no tokenizer; pass `tokenizer=`")
        texts = _check_texts(texts)
        encodings = self.tokenizer.encode_batch(list(texts))
        rows = [encoding.ids[: self.max_length] for encoding in encodings]
        n = max(max(len(row) for row in rows), 1)
        ids = torch.full((len(rows), n), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.bool)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = True
        return ids, mask

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Embed ``texts`` in batches (eval mode, no gradients), in their order.

        Texts are sorted by length inside so that each batch pads little.

        Args:
            texts: the sentences.
            batch_size: texts per forward pass.
            normalize: L2-normalise; default the module's ``normalize``.
            progress: show a tqdm bar over the batches.

        Returns:
            ``(len(texts), dim)`` float32 on the model's device.
        """
        texts = _check_texts(texts)
        check_int(batch_size, "batch_size")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        parts: list[Tensor] = []
        for chunk in tqdm(chunks, desc="encode", disable=not progress):
            ids, mask = self.tokenize([texts[i] for i in chunk])
            parts.append(self(ids.to(device), mask.to(device), normalize=normalize).float())
        self.train(was_training)
        embeddings = torch.cat(parts)
        out = torch.empty_like(embeddings)
        out[torch.tensor(order, device=device)] = embeddings
        return out

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
    ) -> SentenceEncoder:
        """Load a local sentence-transformers (or plain Hugging Face) directory.

        The encoder class follows ``config.json``'s ``model_type`` (bert, roberta,
        distilbert); the tokenizer is ``tokenizer.json``. Defaults come from the
        directory: pooling from ``1_Pooling/config.json`` (else ``"mean"``), normalisation
        from a ``Normalize`` entry in ``modules.json``, ``max_length`` from
        ``sentence_bert_config.json``'s ``max_seq_length`` (else 128).

        Raises:
            FileNotFoundError: no ``tokenizer.json``.
            ValueError: an unsupported ``model_type`` or pooling configuration.
        """
        from .analysis.pretrained_minilm import load_tokenizer

        directory = Path(path)
        config = _read_json(directory / "config.json")
        model = _model_class(config.get("model_type", "bert")).from_pretrained(directory)
        tokenizer = load_tokenizer(directory)
        if pooling is None:
            flags = _read_json(directory / "1_Pooling" / "config.json")
            modes = [mode for key, mode in _ST_POOLING_FLAGS.items() if flags.get(key)]
            if len(modes) > 1:
                raise ValueError(f"1_Pooling/config.json combines several poolings {modes}")
            pooling = modes[0] if modes else "mean"
        if normalize is None:
            modules_path = directory / "modules.json"
            modules = json.loads(modules_path.read_text()) if modules_path.is_file() else []
            normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        if max_length is None:
            settings = _read_json(directory / "sentence_bert_config.json")
            max_length = int(settings.get("max_seq_length", 128))
        return cls(model, tokenizer, pooling, normalize, max_length).eval()


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("`texts` must be a sequence of strings, got one str (wrap it in a list)")
    if not isinstance(texts, Sequence):
        raise TypeError(f"`texts` must be a sequence of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("`texts` must hold at least one string, got an empty sequence")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`texts[{index}]` must be a str, got {type(text).__name__}")
    return list(texts)


class EmbeddingIndex:
    """Embeddings as a service: encode a corpus once, then query it many times.

    Args:
        encoder: the :class:`SentenceEncoder`.
        texts: the corpus.
        batch_size, progress: as in :meth:`SentenceEncoder.encode`.

    Attributes:
        texts: the corpus, in order.
        embeddings: ``(len(texts), dim)``, L2-normalised.
    """

    def __init__(
        self,
        encoder: SentenceEncoder,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: bool = False,
    ) -> None:
        if not isinstance(encoder, SentenceEncoder):
            raise TypeError(f"`encoder` must be a SentenceEncoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.texts = _check_texts(texts)
        self.batch_size = batch_size
        self.embeddings = encoder.encode(self.texts, batch_size, normalize=True, progress=progress)

    def __len__(self) -> int:
        return len(self.texts)

    def similarity_matrix(self) -> Tensor:
        """Cosine similarity of every corpus pair: ``(c, c)``, ones on the diagonal."""
        return self.embeddings @ self.embeddings.T

    def neighbours(self, k: int = 5) -> tuple[Tensor, Tensor]:
        """Each corpus entry's ``k`` nearest other entries: ``(scores, indices)``, ``(c, k)``.

        Raises:
            ValueError: ``k >= len(self)`` (an entry is never its own neighbour).
        """
        check_int(k, "k")
        if k >= len(self):
            raise ValueError(f"`k` must be < the corpus size {len(self)}, got {k}")
        similarity = self.similarity_matrix()
        similarity.fill_diagonal_(float("-inf"))
        return similarity.topk(k, dim=1)

    def search(self, queries: Sequence[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` corpus texts nearest each query, as ``(text, cosine)``, best first."""
        query_embeddings = self.encoder.encode(queries, self.batch_size, normalize=True)
        scores, indices = semantic_search(query_embeddings, self.embeddings, top_k)
        return [
            [(self.texts[i], float(s)) for s, i in zip(row_s.tolist(), row_i.tolist(), strict=True)]
            for row_s, row_i in zip(scores, indices, strict=True)
        ]


def load_paraphrases() -> tuple[list[tuple[str, str]], list[str]]:
    """The shipped paraphrase set: 20 ``(sentence, paraphrase)`` pairs and 10 unrelated
    sentences (``data/paraphrases.json``)."""
    path = resources.files(__package__).joinpath("data").joinpath("paraphrases.json")
    data = json.loads(path.read_text())
    return [(a, b) for a, b in data["pairs"]], list(data["unrelated"])


def train_bert_tokenizer(texts: Sequence[str], vocab_size: int = 200) -> Any:
    """A WordPiece ``tokenizers.Tokenizer`` trained on ``texts`` that adds BERT's
    ``[CLS] a [SEP]`` / ``[CLS] a [SEP] b [SEP]`` (segment ids 0 then 1); specials
    ``[PAD] [UNK] [CLS] [SEP] [MASK]`` are ids 0..4. Lower-cases its input."""
    from tokenizers import normalizers, processors

    from .objectives import train_wordpiece

    tokenizer = train_wordpiece([text.lower() for text in texts], vocab_size=vocab_size)
    tokenizer.normalizer = normalizers.Lowercase()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


# Word slots of the synonym paraphrase task: each word has one synonym, and a sentence and
# its paraphrase share no content word, so only learned synonymy can match them.
SYNONYM_SUBJECTS = (
    ("man", "guy"), ("woman", "lady"), ("child", "kid"), ("doctor", "physician"),
    ("student", "pupil"), ("dog", "puppy"),
)  # fmt: skip
SYNONYM_VERBS = (
    ("buys", "purchases"), ("fixes", "repairs"), ("likes", "enjoys"), ("sees", "notices"),
    ("cleans", "washes"), ("sells", "trades"),
)  # fmt: skip
SYNONYM_OBJECTS = (
    ("car", "automobile"), ("house", "home"), ("bike", "bicycle"), ("phone", "mobile"),
    ("book", "novel"), ("sofa", "couch"), ("picture", "photo"),
)  # fmt: skip


def synonym_paraphrases(seed: int = 0, n_test: int = 60) -> tuple[list[tuple[str, str]], ...]:
    """Every "the S V the O" sentence with a paraphrase that swaps each word for its synonym.

    The 252 subject/verb/object combinations are shuffled with ``seed`` and split into a
    training list and a test list of ``n_test`` combinations never seen in training
    (every word is seen, in other combinations). Which side of each pair uses the first
    synonym is random.

    Returns:
        ``(train, test)``: lists of ``(sentence, paraphrase)``.
    """
    check_int(n_test, "n_test")
    generator = random.Random(seed)
    combos = [(s, v, o) for s in SYNONYM_SUBJECTS for v in SYNONYM_VERBS for o in SYNONYM_OBJECTS]
    if n_test >= len(combos):
        raise ValueError(f"`n_test` must be < {len(combos)}, got {n_test}")
    generator.shuffle(combos)
    pairs = []
    for s, v, o in combos:
        flip = [generator.random() < 0.5 for _ in range(3)]
        words = [slot[int(f)] for slot, f in zip((s, v, o), flip, strict=True)]
        other = [slot[1 - int(f)] for slot, f in zip((s, v, o), flip, strict=True)]
        pairs.append((f"the {words[0]} {words[1]} the {words[2]}",
                      f"the {other[0]} {other[1]} the {other[2]}"))  # fmt: skip
    return pairs[n_test:], pairs[:n_test]


def paraphrase_recall_at_1(encoder: SentenceEncoder, pairs: Sequence[tuple[str, str]]) -> float:
    """Fraction of pairs whose first sentence's nearest second sentence (cosine, among all
    the pairs' second sentences) is its own paraphrase; chance is ``1 / len(pairs)``."""
    queries = encoder.encode([a for a, _ in pairs], normalize=True)
    corpus = encoder.encode([b for _, b in pairs], normalize=True)
    _, indices = semantic_search(queries, corpus, top_k=1)
    hits = indices[:, 0].cpu() == torch.arange(len(pairs))
    return float(hits.float().mean())


SENTENCE_LOSSES = ("mnrl", "softmax", "cosine", "triplet")


def train_paraphrase_encoder(
    steps: int = 300,
    batch_size: int = 32,
    progress: bool = False,
    seed: int = 0,
    loss: str = "mnrl",
) -> tuple[SentenceEncoder, dict[str, float]]:
    """A tiny BERT bi-encoder trained from scratch on :func:`synonym_paraphrases`.

    Args:
        steps, batch_size, progress, seed: the run.
        loss: the objective (:mod:`~attnzoo.transformers_zoo.sentence_losses`):
            ``"mnrl"`` (multiple negatives ranking on the pairs), ``"softmax"`` (a
            paraphrase / not-paraphrase classifier on ``(u, v, |u - v|)``), ``"cosine"``
            (cosine regressed to 1 for paraphrases and 0 otherwise) or ``"triplet"``
            (anchor, its paraphrase, another pair's paraphrase; Euclidean, margin 5). The
            non-paraphrases pair each sentence with the next pair's paraphrase in the batch.

    Returns:
        the encoder and ``{"recall@1_before", "recall@1_after", "chance", "loss_initial",
        "loss_final"}`` measured on the held-out combinations.
    """
    from .bert import BertConfig, BertModel
    from .sentence_losses import (
        SoftmaxLoss,
        cosine_similarity_loss,
        multiple_negatives_ranking_loss,
        triplet_loss,
    )
    from .training import TrainConfig, fit

    if loss not in SENTENCE_LOSSES:
        raise ValueError(f"`loss` must be one of {SENTENCE_LOSSES}, got {loss!r}")
    check_int(batch_size, "batch_size", minimum=2)
    torch.manual_seed(seed)
    train, test = synonym_paraphrases(seed)
    tokenizer = train_bert_tokenizer([text for pair in train + test for text in pair])
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=32,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    encoder = SentenceEncoder(BertModel(config, add_pooling_layer=False), tokenizer, "mean")
    # The classifier of the softmax objective trains with the encoder and is then dropped.
    trained = nn.ModuleDict({"encoder": encoder, "head": SoftmaxLoss(config.hidden_size, 2)})
    before = paraphrase_recall_at_1(encoder, test)
    generator = random.Random(seed)

    def loss_fn(model: nn.Module, batch: object) -> Tensor:
        pairs = list(batch)  # type: ignore[call-overload]
        u = encoder(*encoder.tokenize([a for a, _ in pairs]))
        v = encoder(*encoder.tokenize([b for _, b in pairs]))
        if loss == "mnrl":
            return multiple_negatives_ranking_loss(u, v)
        other = v.roll(1, dims=0)  # another pair's paraphrase: a non-paraphrase of u
        if loss == "triplet":
            return triplet_loss(u, v, other)
        both_u, both_v = torch.cat([u, u]), torch.cat([v, other])
        targets = torch.cat([torch.ones(len(pairs)), torch.zeros(len(pairs))])
        if loss == "cosine":
            return cosine_similarity_loss(both_u, both_v, targets)
        return model["head"](both_u, both_v, targets.long())  # type: ignore[index, no-any-return]

    history = fit(
        trained,
        loss_fn,
        lambda step: generator.sample(train, batch_size),
        TrainConfig(steps=steps, lr=1e-3, progress=progress, description=f"sbert-{loss}"),
    )
    metrics = {
        "recall@1_before": before,
        "recall@1_after": paraphrase_recall_at_1(encoder, test),
        "chance": 1 / len(test),
        "loss_initial": sum(history.losses[:10]) / 10,
        "loss_final": history.mean_last(20),
    }
    return encoder, metrics


def run_sbert_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train a tiny Sentence-BERT on synonym paraphrases (held-out recall@1 before/after);
    with the real all-MiniLM-L6-v2 installed, also rank the shipped paraphrases."""
    _, metrics = train_paraphrase_encoder(steps or 300, progress=progress, seed=seed)
    try:
        from .analysis.pretrained_minilm import minilm_directory

        directory = minilm_directory()
    except ImportError:
        return metrics
    pairs, unrelated = load_paraphrases()
    minilm = SentenceEncoder.from_pretrained(directory)
    metrics["minilm_paraphrase_top1"] = paraphrase_ranking_accuracy(minilm, pairs, unrelated)
    return metrics


def paraphrase_ranking_accuracy(
    encoder: SentenceEncoder, pairs: Sequence[tuple[str, str]], unrelated: Sequence[str]
) -> float:
    """Fraction of sentences (both sides of every pair) whose nearest other sentence, among
    all the pairs' sentences and the unrelated ones, is their paraphrase."""
    texts = [text for pair in pairs for text in pair] + list(unrelated)
    index = EmbeddingIndex(encoder, texts)
    _, nearest = index.neighbours(k=1)
    partner = torch.arange(2 * len(pairs)) ^ 1  # 0 <-> 1, 2 <-> 3, ...
    return float((nearest[: 2 * len(pairs), 0].cpu() == partner).float().mean())


__all__ = [
    "POOLING_MODES",
    "SENTENCE_LOSSES",
    "SYNONYM_OBJECTS",
    "SYNONYM_SUBJECTS",
    "SYNONYM_VERBS",
    "EmbeddingIndex",
    "Pooling",
    "SentenceEncoder",
    "check_pooling_mode",
    "cos_sim",
    "load_paraphrases",
    "paraphrase_ranking_accuracy",
    "paraphrase_recall_at_1",
    "pool",
    "run_sbert_demo",
    "semantic_search",
    "synonym_paraphrases",
    "train_bert_tokenizer",
    "train_paraphrase_encoder",
]
