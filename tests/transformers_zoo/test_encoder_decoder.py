"""EncoderDecoderModel: Hugging Face parity (BERT2BERT, BERT2GPT2), warm start, caching."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnzoo.transformers_zoo.checkpoints import read_hf_directory, write_hf_directory  # noqa: E402
from attnzoo.transformers_zoo.encoder_decoder import (  # noqa: E402
    BertDecoder,
    EncoderDecoderModel,
    GPT2Decoder,
    run_demo,
)

TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _bert_config(**kwargs):
    base = dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    return transformers.BertConfig(**{**base, **kwargs})


def _gpt2_config(**kwargs):
    base = dict(vocab_size=89, n_embd=48, n_layer=2, n_head=4, n_positions=40)
    return transformers.GPT2Config(**{**base, "bos_token_id": 1, "eos_token_id": 2, **kwargs})


def _hf_pair(kind: str):
    torch.manual_seed(0)
    encoder = transformers.BertModel(_bert_config())
    if kind == "bert":
        config = _bert_config(
            vocab_size=89,
            num_attention_heads=2,
            intermediate_size=40,
            hidden_act="gelu_new",
            is_decoder=True,
            add_cross_attention=True,
        )
        decoder = transformers.BertLMHeadModel(config)
    else:
        decoder = transformers.GPT2LMHeadModel(_gpt2_config(add_cross_attention=True))
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = 1
    model.config.pad_token_id = 0
    model.set_attn_implementation("eager")  # attention weights for the comparison
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    dec = torch.randint(3, 89, (3, 5), generator=g)
    dec_mask = torch.ones(3, 5, dtype=torch.long)
    dec_mask[2, 4:] = 0
    return ids, mask, dec, dec_mask


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_parity_with_hugging_face_composite(kind, tmp_path):
    hf = _hf_pair(kind)
    hf.save_pretrained(tmp_path)
    ours = EncoderDecoderModel.from_pretrained(tmp_path)
    assert (ours.enc_to_dec_proj is not None) == (kind == "gpt2")  # widths 32 -> 48
    ids, mask, dec, dec_mask = _inputs()
    labels = dec.masked_fill(dec_mask == 0, -100)
    with torch.no_grad():
        ref = hf(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=dec,
            decoder_attention_mask=dec_mask,
            labels=labels,
            output_attentions=True,
        )
        out = ours(ids, mask, dec, dec_mask, labels=labels, output_attentions=True)
    real, real_src = dec_mask.bool(), mask.bool()
    diff = (out.logits - ref.logits).abs()[real].max().item()
    assert diff <= TOL, diff
    enc_diff = (out.encoder_last_hidden_state - ref.encoder_last_hidden_state).abs()
    assert enc_diff[real_src].max().item() <= TOL
    for a, b in zip(out.decoder_attentions, ref.decoder_attentions, strict=True):
        assert (a - b).abs().permute(0, 2, 1, 3)[real].max().item() <= TOL
    for a, b in zip(out.cross_attentions, ref.cross_attentions, strict=True):
        assert (a - b).abs().permute(0, 2, 1, 3)[real].max().item() <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    # labels alone: decoder inputs are the labels shifted right, as Hugging Face builds them
    with torch.no_grad():
        ref2 = hf(input_ids=ids, attention_mask=mask, labels=labels)
        out2 = ours(ids, mask, labels=labels)
    assert abs(out2.loss.item() - ref2.loss.item()) <= TOL


def test_warm_start_bert2bert_loads_everything_but_cross_attention(tmp_path):
    torch.manual_seed(0)
    encoder = transformers.BertModel(_bert_config()).eval()
    decoder = transformers.BertForMaskedLM(_bert_config(vocab_size=89)).eval()
    encoder.save_pretrained(tmp_path / "enc")
    decoder.save_pretrained(tmp_path / "dec")
    model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "enc", tmp_path / "dec", output_loading_info=True, decoder_start_token_id=1
    )
    assert isinstance(model.decoder, BertDecoder)
    expected_new = sorted(
        f"decoder.decoder.layers.{i}.{part}"
        for i in range(2)
        for part in (
            *(
                f"cross_attention.{p}.{w}"
                for p in ("query", "key", "value", "out")
                for w in ("weight", "bias")
            ),
            "cross_attention_norm.weight",
            "cross_attention_norm.bias",
        )
    )
    assert sorted(info.new_keys) == expected_new
    assert info.unused_keys == []
    # loaded weights are the checkpoint's
    hf_dec = decoder.state_dict()
    ours = model.decoder.state_dict()
    pairs = {
        "bert.encoder.layer.1.attention.self.query.weight": (
            "decoder.layers.1.self_attention.query.weight"
        ),
        "bert.encoder.layer.0.output.LayerNorm.weight": "decoder.layers.0.ffn_norm.weight",
        "cls.predictions.transform.dense.weight": "cls.predictions.transform.dense.weight",
        "bert.embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    }
    for theirs, mine in pairs.items():
        assert torch.equal(hf_dec[theirs], ours[mine])
    # the encoder equals the Hugging Face encoder
    ids, mask, dec, _ = _inputs()
    with torch.no_grad():
        ref = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        out = model(ids, mask, dec).encoder_last_hidden_state
    assert (out - ref).abs()[mask.bool()].max().item() <= TOL


def test_warm_start_matches_hugging_face_warm_start(tmp_path):
    """Same checkpoints, HF's fresh cross-attention copied over: same logits."""
    torch.manual_seed(0)
    transformers.BertModel(_bert_config()).save_pretrained(tmp_path / "enc")
    transformers.GPT2LMHeadModel(_gpt2_config()).save_pretrained(tmp_path / "dec")
    hf = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
        str(tmp_path / "enc"), str(tmp_path / "dec")
    ).eval()
    model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "enc", tmp_path / "dec", output_loading_info=True
    )
    assert isinstance(model.decoder, GPT2Decoder)
    assert len(info.new_keys) == 2 * 10 + 2  # cross-attention per layer + enc_to_dec_proj
    assert all(".cross_attention" in k or k.startswith("enc_to_dec_proj") for k in info.new_keys)
    hf.save_pretrained(tmp_path / "hf")
    reference = EncoderDecoderModel.from_pretrained(tmp_path / "hf")
    mine, theirs = model.state_dict(), reference.state_dict()
    for key in mine:
        if key not in info.new_keys:
            assert torch.equal(mine[key], theirs[key]), key
    ids, mask, dec, dec_mask = _inputs()
    with torch.no_grad():
        a = reference(ids, mask, dec, dec_mask).logits
        b = hf(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=dec,
            decoder_attention_mask=dec_mask,
        ).logits
    assert (a - b).abs()[dec_mask.bool()].max().item() <= TOL


def test_unknown_and_missing_keys_are_errors(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(_bert_config()).save_pretrained(tmp_path / "enc")
    transformers.BertForMaskedLM(_bert_config()).save_pretrained(tmp_path / "dec")
    config, state = read_hf_directory(tmp_path / "dec")
    write_hf_directory(
        tmp_path / "extra",
        config,
        {**state, "bert.encoder.layer.0.bogus": state["cls.predictions.bias"]},
    )
    with pytest.raises(ValueError, match="bogus"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc", tmp_path / "extra")
    key = "bert.encoder.layer.1.intermediate.dense.weight"
    write_hf_directory(tmp_path / "missing", config, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match=r"missing keys.*decoder\.layers\.1\.ffn\.intermediate"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc", tmp_path / "missing")


def _sharp(model):
    # Larger random weights than the 0.02 initialisation, so greedy outputs vary by row.
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)
    return model.eval()


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_cached_generation_equals_uncached(kind, tmp_path):
    hf = _hf_pair(kind)
    hf.save_pretrained(tmp_path)
    model = _sharp(EncoderDecoderModel.from_pretrained(tmp_path))
    model.eos_token_id = 2
    ids, mask, _, _ = _inputs()
    cached = model.generate(ids, mask, max_new_tokens=8)
    uncached = model.generate(ids, mask, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)
    # each generated token is the argmax of a full teacher-forced recomputation
    with torch.no_grad():
        logits = model(ids, mask, cached[:, :-1]).logits
    finished = torch.cumsum(cached[:, 1:-1] == 2, dim=1) > 0
    live = torch.cat([torch.zeros_like(finished[:, :1]), finished], dim=1) == 0
    assert torch.equal(logits.argmax(-1)[live], cached[:, 1:][live])
    beams = model.generate(ids, mask, max_new_tokens=8, num_beams=3)
    beams_uncached = model.generate(ids, mask, max_new_tokens=8, num_beams=3, use_cache=False)
    assert torch.equal(beams, beams_uncached)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_save_pretrained_is_read_back_by_hugging_face(kind, tmp_path):
    hf = _hf_pair(kind)
    hf.save_pretrained(tmp_path / "hf")
    ours = EncoderDecoderModel.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    again, info = transformers.EncoderDecoderModel.from_pretrained(
        tmp_path / "ours", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    again.set_attn_implementation("eager")
    ids, mask, dec, _ = _inputs()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        got = again.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        ours_again = EncoderDecoderModel.from_pretrained(tmp_path / "ours")(ids, mask, dec).logits
    assert (got - want).abs().max().item() <= TOL
    assert (ours_again - want).abs().max().item() <= TOL
    assert again.config.decoder_start_token_id == 1 and again.config.pad_token_id == 0


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize(
    "options",
    [
        dict(repetition_penalty=1.6, min_new_tokens=4),
        dict(num_beams=3, length_penalty=0.7),
        dict(num_beams=2, repetition_penalty=1.3),
    ],
    ids=["penalty-min-tokens", "beams", "beams-penalty"],
)
def test_generate_matches_hugging_face(kind, options, tmp_path):
    hf = _hf_pair(kind)
    hf = _sharp(hf)
    hf.save_pretrained(tmp_path)
    ours = EncoderDecoderModel.from_pretrained(tmp_path)
    ours.eos_token_id = 2
    ids, mask, _, _ = _inputs()
    got = ours.generate(ids, mask, max_new_tokens=9, **options)
    want = hf.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=9,
        do_sample=False,
        eos_token_id=2,
        pad_token_id=0,
        decoder_start_token_id=1,
        **options,
    )
    assert torch.equal(got, want), (got, want)


def test_sampling_is_seeded_and_top_k_one_is_greedy(tmp_path):
    hf = _hf_pair("gpt2")
    hf.save_pretrained(tmp_path)
    model = _sharp(EncoderDecoderModel.from_pretrained(tmp_path))
    ids, mask, _, _ = _inputs()
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=1.5)
    a = model.generate(ids, mask, generator=torch.Generator().manual_seed(7), **kwargs)
    b = model.generate(ids, mask, generator=torch.Generator().manual_seed(7), **kwargs)
    c = model.generate(ids, mask, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(ids, mask, max_new_tokens=8)
    one = model.generate(ids, mask, max_new_tokens=8, do_sample=True, top_k=1)
    assert torch.equal(greedy, one)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids, mask, do_sample=True, num_beams=2)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, mask, do_sample=True, top_p=1.5)


def test_input_errors(tmp_path):
    hf = _hf_pair("bert")
    hf.save_pretrained(tmp_path)
    model = EncoderDecoderModel.from_pretrained(tmp_path)
    ids, mask, dec, _ = _inputs()
    with pytest.raises(ValueError, match="input_ids"):
        model(ids.masked_fill(ids == ids[0, 0], 500), mask, dec)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(ids, mask, dec + 100)
    with pytest.raises(TypeError, match="attention_mask"):
        model(ids, mask.float(), dec)
    with pytest.raises(ValueError, match="decoder_input_ids` or `labels"):
        model(ids, mask)


@pytest.mark.slow
def test_bert2bert_learns_copy_task():
    metrics = run_demo(steps=600, progress=False, seed=0)
    # Warm-started from two random tiny BERTs (a BertModel decoder checkpoint: 20
    # cross-attention tensors + 5 LM-head tensors are new); untrained it copies ~0%.
    assert metrics["new_keys"] == 25
    assert metrics["exact_match"] >= 0.9, metrics
