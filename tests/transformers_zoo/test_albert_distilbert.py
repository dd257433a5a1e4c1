"""ALBERT and DistilBERT: parity with Hugging Face ``transformers`` (random weights from small
configs, never downloaded), checkpoint round trips, strict key errors, layer sharing.

Tolerance: max abs difference <= 1e-5 in float32 on the real (unpadded) positions."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnzoo.transformers_zoo.albert import (  # noqa: E402
    AlbertConfig,
    AlbertForPreTraining,
    AlbertModel,
)
from attnzoo.transformers_zoo.checkpoints import (  # noqa: E402
    hf_attention_mask,
    read_hf_directory,
    write_hf_directory,
)
from attnzoo.transformers_zoo.distilbert import (  # noqa: E402
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertModel,
)

TOL = 1e-5
VOCAB = 97


def _albert_hf_config(**overrides):
    options = dict(
        vocab_size=VOCAB,
        embedding_size=16,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=61,
        max_position_embeddings=32,
        hidden_act="gelu_new",
        layer_norm_eps=1e-6,
        attn_implementation="eager",
    )
    options.update(overrides)
    return transformers.AlbertConfig(**options)


def _distil_hf_config(**overrides):
    options = dict(
        vocab_size=VOCAB,
        dim=48,
        n_layers=2,
        n_heads=4,
        hidden_dim=61,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    options.update(overrides)
    return transformers.DistilBertConfig(**options)


def _batch(seed: int = 0, batch: int = 3, n: int = 11):
    """Ids with padding: row lengths n, n - 4, 5 (odd lengths)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, n), generator=g)
    lengths = torch.tensor([n, n - 4, 5])[:batch]
    mask = torch.arange(n)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    return ids, mask.long()


def _hf_model(cls, config, seed: int = 0):
    torch.manual_seed(seed)
    model = cls(config).eval()
    # Re-draw every parameter at a larger scale than transformers' init (std 0.02): random
    # biases and LayerNorm affines so a wrong key map cannot hide behind zeros and ones, and
    # pre-activations of order 1 so that e.g. exact and tanh GELU differ measurably.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return model


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max abs difference over real positions (``mask`` (batch, n), dim 1 of a and b)."""
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


def _attention_diff(ours, theirs, mask) -> float:
    keep = mask.bool()
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        # rows of real queries; padded keys have weight 0 in both
        diff = (a - b).abs().amax(dim=(1, 3))  # (batch, n)
        worst = max(worst, diff[keep].max().item())
    return worst


# ---------------------------------------------------------------- ALBERT


def test_albert_model_parity_with_padding(tmp_path):
    hf = _hf_model(transformers.AlbertModel, _albert_hf_config())
    hf.save_pretrained(tmp_path)
    ours = AlbertModel.from_pretrained(tmp_path)
    ids, mask = _batch()
    types = (torch.arange(ids.shape[1]) >= 6).long().expand_as(ids).contiguous()
    with torch.no_grad():
        ref = hf(
            ids,
            attention_mask=mask,
            token_type_ids=types,
            output_attentions=True,
            output_hidden_states=True,
        )
        out = ours(
            ids,
            attention_mask=mask,
            token_type_ids=types,
            output_attentions=True,
            output_hidden_states=True,
        )
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state, mask) <= TOL
    assert (out.pooler_output - ref.pooler_output).abs().max().item() <= TOL
    assert len(out.attentions) == len(ref.attentions) == 3
    assert _attention_diff(out.attentions, ref.attentions, mask) <= TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == 4
    for a, b in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert _max_diff(a, b, mask) <= TOL


def test_albert_bool_and_int_masks_agree_and_float_mask_rejected(tmp_path):
    model = AlbertModel(AlbertConfig(**_small_albert_fields())).eval()
    ids, mask = _batch()
    with torch.no_grad():
        a = model(ids, attention_mask=mask).last_hidden_state
        b = model(ids, attention_mask=mask.bool()).last_hidden_state
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="attention_mask"):
        model(ids, attention_mask=mask.float())
    with pytest.raises(ValueError, match="attention_mask"):
        hf_attention_mask(mask * 2, ids.shape)
    with pytest.raises(ValueError, match=r"input_ids.*\[0, 97\).*97"):
        model(torch.full((1, 3), VOCAB))


def test_albert_position_ids_parity(tmp_path):
    hf = _hf_model(transformers.AlbertModel, _albert_hf_config())
    hf.save_pretrained(tmp_path)
    ours = AlbertModel.from_pretrained(tmp_path)
    ids, mask = _batch()
    positions = torch.arange(3, 3 + ids.shape[1])[None, :]
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=positions).last_hidden_state
        out = ours(ids, attention_mask=mask, position_ids=positions).last_hidden_state
    assert _max_diff(out, ref, mask) <= TOL


def test_albert_for_pretraining_parity_logits_and_loss(tmp_path):
    hf = _hf_model(transformers.AlbertForPreTraining, _albert_hf_config())
    hf.save_pretrained(tmp_path)
    ours = AlbertForPreTraining.from_pretrained(tmp_path)
    ids, mask = _batch(1)
    labels = ids.masked_fill(~mask.bool(), -100)
    labels[:, ::2] = -100
    order = torch.tensor([0, 1, 1])
    with torch.no_grad():
        ref = hf(
            ids,
            attention_mask=mask,
            labels=labels,
            sentence_order_label=order,
            output_attentions=True,
        )
        out = ours(
            ids,
            attention_mask=mask,
            labels=labels,
            sentence_order_label=order,
            output_attentions=True,
        )
    assert _max_diff(out.prediction_logits, ref.prediction_logits, mask) <= TOL
    assert (out.sop_logits - ref.sop_logits).abs().max().item() <= TOL
    assert _attention_diff(out.attentions, ref.attentions, mask) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    with pytest.raises(ValueError, match="sentence_order_label"):
        ours(ids, labels=labels)


def test_albert_save_pretrained_round_trip_through_transformers(tmp_path):
    config = AlbertConfig(**_small_albert_fields(), hidden_dropout_prob=0.0)
    torch.manual_seed(0)
    ours = AlbertForPreTraining(config).eval()
    ours.save_pretrained(tmp_path)
    hf = transformers.AlbertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager")
    hf.eval()
    ids, mask = _batch(2)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask)
        out = ours(ids, attention_mask=mask)
    assert _max_diff(out.prediction_logits, ref.prediction_logits, mask) <= TOL
    assert (out.sop_logits - ref.sop_logits).abs().max().item() <= TOL
    # and back into the library
    again = AlbertForPreTraining.from_pretrained(tmp_path)
    for (k1, v1), (k2, v2) in zip(
        ours.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)


def test_albert_untied_save_and_load_through_transformers(tmp_path):
    torch.manual_seed(3)
    ours = AlbertForPreTraining(AlbertConfig(**_small_albert_fields(), tie_word_embeddings=False))
    ours.eval()
    with torch.no_grad():
        ours.predictions.bias.normal_()
    assert ours.predictions.decoder is not None
    ours.save_pretrained(tmp_path)
    hf = transformers.AlbertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager")
    hf.eval()
    ids, mask = _batch(5)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).prediction_logits
        out = ours(ids, attention_mask=mask).prediction_logits
    assert _max_diff(out, ref, mask) <= TOL
    hf.save_pretrained(tmp_path / "again")
    again = AlbertForPreTraining.from_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert _max_diff(again(ids, attention_mask=mask).prediction_logits, ref, mask) <= TOL


def test_albert_layers_are_shared_and_parameter_count_matches_hf():
    hf_config = _albert_hf_config(num_hidden_layers=6)
    hf = transformers.AlbertModel(hf_config)
    ours = AlbertModel(AlbertConfig(**_small_albert_fields(num_hidden_layers=6)))
    assert len(ours.layer_groups) == 1
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    assert n_ours == n_hf
    # six layers deep, one set of layer weights: a 1-layer model has the same count
    shallow = AlbertModel(AlbertConfig(**_small_albert_fields(num_hidden_layers=1)))
    assert sum(p.numel() for p in shallow.parameters()) == n_ours
    # the shared layer gets gradient from every application
    ids, _ = _batch()
    ours(ids).last_hidden_state.sum().backward()
    assert ours.layer_groups[0].attention.query.weight.grad is not None
    hf_pre = transformers.AlbertForPreTraining(hf_config)
    pre = AlbertForPreTraining(AlbertConfig(**_small_albert_fields(num_hidden_layers=6)))
    assert sum(p.numel() for p in pre.parameters()) == sum(p.numel() for p in hf_pre.parameters())


def test_albert_two_groups_parity(tmp_path):
    hf = _hf_model(
        transformers.AlbertModel, _albert_hf_config(num_hidden_layers=4, num_hidden_groups=2)
    )
    hf.save_pretrained(tmp_path)
    ours = AlbertModel.from_pretrained(tmp_path)
    assert len(ours.layer_groups) == 2
    assert [ours.group_of_layer(i) for i in range(4)] == [0, 0, 1, 1]
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).last_hidden_state
        out = ours(ids, attention_mask=mask).last_hidden_state
    assert _max_diff(out, ref, mask) <= TOL


def test_albert_strict_keys_and_config_errors(tmp_path):
    hf = _hf_model(transformers.AlbertModel, _albert_hf_config())
    hf.save_pretrained(tmp_path)
    config, state = read_hf_directory(tmp_path)
    state["encoder.extra.weight"] = torch.zeros(2)
    del state["pooler.bias"]
    write_hf_directory(tmp_path / "broken", config, state)
    with pytest.raises(ValueError, match=r"missing keys.*pooler\.bias") as info:
        AlbertModel.from_pretrained(tmp_path / "broken")
    assert "encoder.extra.weight" in str(info.value)
    with pytest.raises(ValueError, match="inner_group_num"):
        AlbertConfig(**_small_albert_fields(), inner_group_num=2)
    with pytest.raises(ValueError, match="hidden_act"):
        AlbertConfig(**_small_albert_fields(hidden_act="swish"))
    with pytest.raises(FileNotFoundError):
        AlbertModel.from_pretrained(tmp_path / "nowhere")


def _small_albert_fields(**overrides):
    fields = dict(
        vocab_size=VOCAB,
        embedding_size=16,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=61,
        max_position_embeddings=32,
        hidden_act="gelu_new",
        layer_norm_eps=1e-6,
    )
    fields.update(overrides)
    return fields


# ---------------------------------------------------------------- DistilBERT


@pytest.mark.parametrize(("activation", "sinusoidal"), [("gelu", False), ("relu", True)])
def test_distilbert_model_parity_with_padding(tmp_path, activation, sinusoidal):
    hf = _hf_model(
        transformers.DistilBertModel,
        _distil_hf_config(activation=activation, sinusoidal_pos_embds=sinusoidal),
    )
    hf.save_pretrained(tmp_path)
    ours = DistilBertModel.from_pretrained(tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        out = ours(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state, mask) <= TOL
    assert len(out.attentions) == len(ref.attentions) == 2
    assert _attention_diff(out.attentions, ref.attentions, mask) <= TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert _max_diff(a, b, mask) <= TOL


def test_distilbert_sinusoidal_table_matches_hf_and_is_frozen():
    config = _distil_hf_config(sinusoidal_pos_embds=True)
    torch.manual_seed(0)
    hf = transformers.DistilBertModel(config)
    ours = DistilBertModel(
        DistilBertConfig(
            vocab_size=VOCAB,
            dim=48,
            n_layers=2,
            n_heads=4,
            hidden_dim=61,
            max_position_embeddings=32,
            sinusoidal_pos_embds=True,
        )
    )
    theirs = hf.embeddings.position_embeddings.weight
    mine = ours.embeddings.position_embeddings.weight
    assert (mine - theirs).abs().max().item() <= 1e-6
    assert not mine.requires_grad


def test_distilbert_masked_lm_parity_and_loss(tmp_path):
    hf = _hf_model(transformers.DistilBertForMaskedLM, _distil_hf_config())
    hf.save_pretrained(tmp_path)
    ours = DistilBertForMaskedLM.from_pretrained(tmp_path)
    ids, mask = _batch(3)
    labels = ids.masked_fill(~mask.bool(), -100)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, labels=labels)
        out = ours(ids, attention_mask=mask, labels=labels)
    assert _max_diff(out.logits, ref.logits, mask) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    with pytest.raises(ValueError, match="labels"):
        ours(ids, labels=labels.clamp(min=0) + VOCAB)


def test_distilbert_save_pretrained_round_trip_through_transformers(tmp_path):
    torch.manual_seed(1)
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=48, n_layers=2, n_heads=4, hidden_dim=61, max_position_embeddings=32
    )
    ours = DistilBertForMaskedLM(config).eval()
    ours.save_pretrained(tmp_path)
    hf = transformers.DistilBertForMaskedLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    ids, mask = _batch(4)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    assert _max_diff(out, ref, mask) <= TOL
    base = DistilBertModel(config).eval()
    base.save_pretrained(tmp_path / "base")
    hf_base = transformers.DistilBertModel.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        ref = hf_base(ids, attention_mask=mask).last_hidden_state
        out = base(ids, attention_mask=mask).last_hidden_state
    assert _max_diff(out, ref, mask) <= TOL


def test_distilbert_untied_projection_round_trip(tmp_path):
    hf = _hf_model(transformers.DistilBertForMaskedLM, _distil_hf_config(tie_word_embeddings=False))
    hf.save_pretrained(tmp_path)
    ours = DistilBertForMaskedLM.from_pretrained(tmp_path)
    assert ours.vocab_projector.weight is not None
    assert not torch.equal(
        ours.vocab_projector.weight, ours.distilbert.embeddings.word_embeddings.weight
    )
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    assert _max_diff(out, ref, mask) <= TOL


def test_distilbert_strict_keys(tmp_path):
    hf = _hf_model(transformers.DistilBertModel, _distil_hf_config())
    hf.save_pretrained(tmp_path)
    config, state = read_hf_directory(tmp_path)
    state["transformer.layer.2.ffn.lin1.weight"] = torch.zeros(61, 48)
    del state["transformer.layer.0.sa_layer_norm.weight"]
    write_hf_directory(tmp_path / "broken", config, state)
    with pytest.raises(ValueError, match=r"encoder\.layers\.0\.attention_norm\.weight") as info:
        DistilBertModel.from_pretrained(tmp_path / "broken")
    assert "encoder.layers.2.ffn.intermediate.weight" in str(info.value)
    config["model_type"] = "bert"
    write_hf_directory(tmp_path / "bert", config, read_hf_directory(tmp_path)[1])
    with pytest.raises(ValueError, match="model_type"):
        DistilBertModel.from_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="activation"):
        DistilBertConfig(activation="swish")


def test_distilbert_training_mode_dropout_matches_hf(tmp_path):
    # Same dropout sites and the same order of random draws: with the seed reset, training
    # mode gives Hugging Face's numbers. Both run SDPA here (attention-weight dropout off),
    # so that no kernel difference is magnified by the 1 / (1 - p) dropout scaling.
    config = _distil_hf_config(dropout=0.2, attention_dropout=0.0, attn_implementation="sdpa")
    hf = _hf_model(transformers.DistilBertModel, config)
    hf.save_pretrained(tmp_path)
    ours = DistilBertModel.from_pretrained(tmp_path)
    hf.train()
    ours.train()
    ids, mask = _batch()
    torch.manual_seed(5)
    ref = hf(ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(5)
    out = ours(ids, attention_mask=mask).last_hidden_state
    assert _max_diff(out, ref, mask) <= TOL
    hf.eval()
    with torch.no_grad():
        assert _max_diff(out, hf(ids, attention_mask=mask).last_hidden_state, mask) > 1e-2
