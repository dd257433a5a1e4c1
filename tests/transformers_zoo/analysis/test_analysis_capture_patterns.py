"""Attention capture from zoo models, word aggregation, and Clark et al.'s head patterns."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    EncoderDecoderModel,
    GPT2Config,
    GPT2Model,
)
from attnzoo.transformers_zoo.analysis import (
    AttentionCapture,
    capture_attention,
    cluster_heads,
    embed_heads,
    head_distances,
    head_statistics,
    pattern_report,
    word_attention,
)
from attnzoo.transformers_zoo.encoder_decoder import BertDecoder

TINY = dict(
    vocab_size=50,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=31,
    max_position_embeddings=20,
)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    return ids.masked_fill(~mask, 0), mask


def test_capture_from_an_encoder_cuts_padding_and_matches_the_model() -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY)).eval()
    ids, mask = padded_batch()
    tokens = [[f"t{i}" for i in range(7)], [f"u{i}" for i in range(7)]]
    captures = capture_attention(model, ids, mask, tokens)
    direct = model(ids, attention_mask=mask, output_attentions=True).attentions
    assert [c.attention.shape for c in captures] == [(2, 3, 7, 7), (2, 3, 4, 4)]
    assert captures[1].tokens == ["u0", "u1", "u2", "u3"]
    for layer in range(2):
        torch.testing.assert_close(captures[1].attention[layer], direct[layer][1, :, :4, :4])
    torch.testing.assert_close(captures[1].attention.sum(-1), torch.ones(2, 3, 4))
    assert [v.name for v in captures[0].views()] == ["self"]
    # The default token strings are the ids.
    assert capture_attention(model, ids[:1])[0].tokens == [str(int(i)) for i in ids[0]]


def test_capture_from_a_decoder_is_causal() -> None:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
    )
    capture = capture_attention(GPT2Model(config), torch.arange(5, 11)[None])[0]
    assert capture.attention.shape == (2, 2, 6, 6)
    assert float(torch.triu(capture.attention, diagonal=1).abs().max()) == 0.0


def test_capture_from_an_encoder_decoder_has_three_views() -> None:
    torch.manual_seed(0)
    model = EncoderDecoderModel(BertModel(BertConfig(**TINY)), BertDecoder(BertConfig(**TINY)))
    ids, mask = padded_batch()
    decoder_ids = torch.randint(5, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    decoder_mask = torch.ones(2, 5, dtype=torch.bool)
    decoder_mask[0, 3:] = False
    captures = capture_attention(
        model,
        ids,
        mask,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=decoder_mask,
        decoder_tokens=[list("abcde"), list("vwxyz")],
    )
    first, second = captures
    assert first.cross_attention.shape == (2, 3, 3, 7)
    assert second.cross_attention.shape == (2, 3, 5, 4)
    views = {v.name: v for v in second.views()}
    assert list(views) == ["encoder", "decoder", "cross"]
    assert views["cross"].query_tokens == list("vwxyz") and len(views["cross"].key_tokens) == 4
    torch.testing.assert_close(second.cross_attention.sum(-1), torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(ids, mask)  # the model's own error; capture says the same below
    with pytest.raises(ValueError, match="decoder_input_ids"):
        capture_attention(model, ids, mask, labels=None)


def test_capture_errors_are_clear() -> None:
    model = BertModel(BertConfig(**TINY))
    ids, mask = padded_batch()
    with pytest.raises(TypeError, match="cannot return attentions"):
        capture_attention(torch.nn.Linear(3, 3), ids)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        capture_attention(lambda x: x, ids)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`tokens` must hold 2 lists of 7"):
        capture_attention(model, ids, mask, [["a"] * 7])
    with pytest.raises(ValueError, match="attention_mask.*right padding"):
        capture_attention(model, ids, mask.flip(-1))
    with pytest.raises(ValueError, match="input_ids"):
        capture_attention(model, ids[0])


def test_word_attention_sums_into_words_and_averages_out_of_them() -> None:
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 3, 6, 6, generator=generator).softmax(-1)
    word_ids = [None, 0, 1, 1, 2, None]  # [CLS] w0 w1a w1b w2 [SEP]
    words = word_attention(attention, word_ids)
    assert words.shape == (2, 3, 3, 3)
    pieces = {0: [1], 1: [2, 3], 2: [4]}
    for i, rows in pieces.items():
        for j, cols in pieces.items():
            expected = attention[..., rows, :][..., cols].sum(-1).mean(-1)
            torch.testing.assert_close(words[..., i, j], expected)
    # Rows keep the mass their pieces gave to words (specials dropped).
    to_words = attention[..., 1:5].sum(-1)
    torch.testing.assert_close(
        words.sum(-1),
        torch.stack([to_words[..., 1], to_words[..., 2:4].mean(-1), to_words[..., 4]], -1),
    )
    with pytest.raises(ValueError, match="one entry per token"):
        word_attention(attention, word_ids[:-1])
    with pytest.raises(ValueError, match="missing"):
        word_attention(attention, [None, 0, 2, 2, 2, None])


def planted_capture() -> AttentionCapture:
    """4 heads over "[CLS] a b , c [SEP]": to [CLS], to [SEP], to the previous token, uniform."""
    tokens = ["[CLS]", "a", "b", ",", "c", "[SEP]"]
    n = len(tokens)
    heads = torch.zeros(4, n, n)
    heads[0, :, 0] = 1.0
    heads[1, :, -1] = 1.0
    heads[2, 0, 0] = 1.0
    for i in range(1, n):
        heads[2, i, i - 1] = 1.0
    heads[3] = 1.0 / n
    return AttentionCapture(tokens, heads.view(2, 2, n, n))


def test_head_statistics_on_planted_heads() -> None:
    stats = head_statistics([planted_capture()])
    n = 6
    assert stats.attention["cls"][0, 0] == pytest.approx(1.0)
    assert stats.attention["sep"][0, 1] == pytest.approx(1.0)
    assert stats.attention["prev"][1, 0] == pytest.approx(5 / 6)
    assert stats.attention["punct"][1, 1] == pytest.approx(1 / n)
    assert stats.attention["self"][1, 0] == pytest.approx(1 / 6)  # row 0 attends to itself
    assert stats.entropy[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert stats.entropy[1, 1] == pytest.approx(stats.uniform_entropy)
    report = pattern_report(stats)
    assert "cls: 0-0 (1.00)" in report and "sep: 0-1 (1.00)" in report
    assert "prev: 1-0 (0.83)" in report and "broad: 1-1" in report
    assert "focused: 0-0 (0.00 nats), 0-1 (0.00 nats), 1-0" in report


def test_head_distances_match_scipy_jensen_shannon_and_cluster() -> None:
    jensenshannon = pytest.importorskip("scipy.spatial.distance").jensenshannon
    generator = torch.Generator().manual_seed(0)
    captures = []
    for n in (5, 7):
        base = torch.rand(2, n, n, generator=generator).softmax(-1)
        noise = 0.02 * torch.rand(2, n, n, generator=generator)
        pair = torch.stack([base[0], base[0] + noise[0], base[1], base[1] + noise[1]])
        captures.append(AttentionCapture(["x"] * n, (pair / pair.sum(-1, keepdim=True))[None]))
    distances = head_distances(captures)
    assert distances.shape == (4, 4)
    for a in range(4):
        for b in range(4):
            rows = [
                (c.attention[0, a, i], c.attention[0, b, i])
                for c in captures
                for i in range(len(c.tokens))
            ]
            js = sum(
                jensenshannon(p.double().numpy(), q.double().numpy(), base=2) ** 2 for p, q in rows
            )
            assert float(distances[a, b]) == pytest.approx((js / len(rows)) ** 0.5, abs=1e-5)
    assert cluster_heads(distances, 2) == [0, 0, 1, 1]
    assert cluster_heads(distances, 4) == [0, 1, 2, 3]
    points = embed_heads(distances)
    assert points.shape == (4, 2)
    assert torch.cdist(points, points)[0, 1] < torch.cdist(points, points)[0, 2]
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_heads(distances, 5)


def test_embed_heads_recovers_euclidean_points() -> None:
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    recovered = embed_heads(torch.cdist(points, points))
    torch.testing.assert_close(
        torch.cdist(recovered, recovered), torch.cdist(points, points), atol=1e-4, rtol=0
    )
