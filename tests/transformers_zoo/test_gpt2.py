"""GPT-2: parity with Hugging Face, checkpoints, KV cache and generation."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from attnzoo.transformers_zoo.generation import (
    apply_repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from attnzoo.transformers_zoo.gpt2 import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    few_shot_classify,
    format_few_shot,
    position_ids_from_attention_mask,
)

TOL = 1e-5
VOCAB = 97
EOS = 5


def hf_config(**extra):
    options = dict(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=48,
        n_layer=3,
        n_head=4,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=EOS,
        eos_token_id=EOS,
        attn_implementation="eager",
    )
    options.update(extra)
    return transformers.GPT2Config(**options)


def hf_lm(seed=0, **extra):
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(hf_config(**extra)).eval()
    # Non-trivial LayerNorm parameters and biases, so that a mapping error shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = hf_lm()
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    ours = GPT2LMHeadModel.from_pretrained(path)
    return hf, ours, path


def padded_batch(left: bool):
    torch.manual_seed(1)
    ids = torch.randint(6, VOCAB, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    for row, length in enumerate((9, 6, 4)):
        if left:
            mask[row, : 9 - length] = 0
        else:
            mask[row, length:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.mark.parametrize("left", [False, True])
def test_lm_parity_with_padding(pair, left):
    hf, ours, _ = pair
    ids, mask = padded_batch(left)
    positions = position_ids_from_attention_mask(mask)
    labels = ids.masked_fill(mask == 0, -100)
    # A target predicted from a padding position (the first real token of a left-padded
    # row) depends on what padding rows compute, which differs by design (ours: zeros).
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    with torch.no_grad():
        ref = hf(
            ids,
            attention_mask=mask,
            position_ids=positions,
            labels=labels,
            output_attentions=True,
            output_hidden_states=True,
        )
        out = ours(
            ids,
            attention_mask=mask,
            position_ids=positions,
            labels=labels,
            output_attentions=True,
            output_hidden_states=True,
        )
    real = mask.bool()
    assert (out.logits - ref.logits)[real].abs().max() <= TOL
    assert (out.hidden_states[-1] - ref.hidden_states[-1])[real].abs().max() <= TOL
    assert len(out.attentions) == len(ref.attentions) == 3
    for ours_w, ref_w in zip(out.attentions, ref.attentions, strict=True):
        # Real query rows, all keys (padding keys get weight 0 in both).
        diff = (ours_w - ref_w).abs().amax(dim=(1, 3))
        assert diff[real].max() <= TOL
    assert abs(float(out.loss) - float(ref.loss)) <= TOL


def test_base_model_parity_and_load_of_bare_checkpoint(tmp_path):
    torch.manual_seed(0)
    hf = transformers.GPT2Model(hf_config(activation_function="gelu", n_inner=40)).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT2Model.from_pretrained(tmp_path)
    assert ours.config.n_inner == 40
    ids, mask = padded_batch(left=False)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask.bool()).last_hidden_state
    assert (got - ref)[mask.bool()].abs().max() <= TOL
    # A head model reads the bare checkpoint and ties its head.
    lm = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert lm.lm_head.weight.data_ptr() == lm.transformer.word_embeddings.weight.data_ptr()


def test_save_pretrained_round_trip_to_hf(pair, tmp_path):
    hf, ours, _ = pair
    ours.save_pretrained(tmp_path)
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager")
    back.eval()
    ids, mask = padded_batch(left=False)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = back(ids, attention_mask=mask).logits
    assert (got - ref)[mask.bool()].abs().max() <= TOL


def test_unknown_and_missing_keys_are_listed(pair, tmp_path):
    from safetensors.torch import load_file, save_file

    _, _, path = pair
    state = load_file(str(path / "model.safetensors"))
    state["transformer.h.0.attn.extra.weight"] = torch.zeros(2)
    del state["transformer.h.1.mlp.c_fc.bias"]
    tmp_path.joinpath("config.json").write_text(path.joinpath("config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing keys") as info:
        GPT2LMHeadModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert "transformer.decoder.layers.1.ffn.intermediate.bias" in message
    assert "transformer.h.0.attn.extra.weight" in message


def test_old_checkpoint_mask_buffers_are_dropped(pair, tmp_path):
    from safetensors.torch import load_file, save_file

    hf, _, path = pair
    state = load_file(str(path / "model.safetensors"))
    for i in range(3):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tmp_path.joinpath("config.json").write_text(path.joinpath("config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))
    ours = GPT2LMHeadModel.from_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 7))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= TOL


def test_unsupported_config_is_refused(tmp_path):
    hf = transformers.GPT2LMHeadModel(hf_config(scale_attn_by_inverse_layer_idx=True))
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        GPT2LMHeadModel.from_pretrained(tmp_path)


def test_kv_cache_matches_uncached_forward(pair):
    _, ours, _ = pair
    ids, mask = padded_batch(left=True)
    positions = position_ids_from_attention_mask(mask)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask, position_ids=positions).logits
        cache = ours.new_cache()
        steps = [
            ours(ids[:, :4], mask[:, :4], position_ids=positions[:, :4], past_key_values=cache)
        ]
        for t in range(4, 9):
            steps.append(
                ours(
                    ids[:, t : t + 1],
                    mask[:, : t + 1],
                    position_ids=positions[:, t : t + 1],
                    past_key_values=cache,
                )
            )
    cached = torch.cat([s.logits for s in steps], dim=1)
    real = mask.bool()
    assert (cached - full)[real].abs().max() <= TOL
    assert len(cache[0].self_attention) == 9


def test_cpu_decoding_route_matches_the_plain_products(tmp_path, monkeypatch):
    # Widths at which the joint q/k/v product, both feed-forward products and the
    # vocabulary projection are large enough for the CPU decoding route of
    # attnzoo.attention.projection; the reference runs with autograd on, where every
    # module is called as usual (F.linear).
    from attnzoo.attention import projection

    hf = hf_lm(vocab_size=1200, n_embd=448, n_layer=2, n_head=4)
    hf.save_pretrained(tmp_path)
    ours = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    routed = []
    for name in ("_one_row", "_few_rows"):
        original = getattr(projection, name)
        monkeypatch.setattr(
            projection, name, lambda *a, _f=original, _n=name: routed.append(_n) or _f(*a)
        )
    torch.manual_seed(2)
    for batch, route in ((1, "_one_row"), (3, "_few_rows")):
        ids = torch.randint(6, 1200, (batch, 7))
        reference = ours(ids).logits.detach()
        with torch.no_grad():
            cache = ours.new_cache()
            steps = [ours(ids[:, t : t + 1], past_key_values=cache).logits for t in range(7)]
            expected = hf(ids).logits
        scale = reference.abs().max()
        assert (torch.cat(steps, dim=1) - reference).abs().max() <= 2e-6 * scale
        assert (expected - reference).abs().max() <= 2e-6 * scale
        # Per step: three per layer (joint q/k/v, feed-forward in and out), one vocabulary.
        assert routed.count(route) == 7 * (3 * 2 + 1)
    got = ours.generate(ids, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(got, hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0))


def count_forwards(model):
    calls = []
    handle = model.transformer.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("left_padded", [False, True])
def test_greedy_generate_matches_hf(pair, left_padded):
    hf, ours, _ = pair
    ids, mask = padded_batch(left=True)
    if not left_padded:
        ids, mask = ids[:1], mask[:1]
    calls, handle = count_forwards(ours)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    handle.remove()
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(got, ref)
    assert len(calls) == got.shape[1] - ids.shape[1]  # one forward per new token


def test_greedy_stops_at_eos_and_pads():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=12,
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=3,
        eos_token_id=3,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make EOS the argmax everywhere
        model.transformer.decoder.norm.weight.zero_()
        model.transformer.decoder.norm.bias.zero_()
        model.transformer.decoder.norm.bias[0] = 1.0
        model.transformer.word_embeddings.weight.zero_()
        model.transformer.word_embeddings.weight[3, 0] = 1.0
    prompt = torch.tensor([[4, 5], [6, 7]])
    out = model.generate(prompt, max_new_tokens=5)
    assert out.tolist() == [[4, 5, 3], [6, 7, 3]]
    out = model.generate(prompt, max_new_tokens=5, min_new_tokens=2)
    # EOS is forbidden for the first two new tokens, then taken.
    assert out[:, 2:4].ne(3).all() and out[:, 4].eq(3).all() and out.shape[1] == 5


def test_beam_search_matches_hf(tmp_path):
    # Both rank hypotheses by the summed log-probability (length_penalty=0: HF divides by
    # length ** 0, the GNMT normaliser is ((5 + L) / 6) ** 0); we compare the returned
    # best sequence of every row, token for token. Small vocabulary and large weights,
    # so that the beams differ from a repeated token.
    hf = hf_lm(seed=2, vocab_size=12, initializer_range=0.4)
    hf.save_pretrained(tmp_path)
    ours = GPT2LMHeadModel.from_pretrained(tmp_path)
    ids, mask = padded_batch(left=True)
    ids = ids % 12
    got = ours.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=8,
        num_beams=3,
        length_penalty=0.0,
        pad_token_id=0,
    )
    ref = hf.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=8,
        num_beams=3,
        length_penalty=0.0,
        do_sample=False,
        pad_token_id=0,
        early_stopping=False,
    )
    assert torch.equal(got, ref[:, : got.shape[1]])
    assert ref[:, got.shape[1] :].eq(0).all()
    assert len(set(got[:, 9:].flatten().tolist())) > 3  # not a degenerate repeat


def test_repetition_penalty_by_hand():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 4.0]])
    tokens = torch.tensor([[0, 1, 1], [2, 3, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out = apply_repetition_penalty(scores, tokens, 2.0, mask)
    expected = torch.tensor([[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, -4.0, 2.0]])
    assert torch.equal(out, expected)


def test_repetition_penalty_in_generate_matches_hf(pair):
    hf, ours, _ = pair
    ids = torch.randint(6, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    got = ours.generate(ids, max_new_tokens=10, repetition_penalty=1.7, pad_token_id=0)
    ref = hf.generate(
        ids, max_new_tokens=10, repetition_penalty=1.7, do_sample=False, pad_token_id=0
    )
    assert torch.equal(got, ref)


def test_top_k_and_top_p_by_hand():
    scores = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]]))
    assert torch.isinf(top_k_filter(scores, 2)).tolist() == [[True, False, True, False]]
    # sorted: 0.4, 0.3, 0.2, 0.1; p=0.65 keeps 0.4 + 0.3 = 0.7 (smallest set reaching 0.65)
    assert torch.isinf(top_p_filter(scores, 0.65)).tolist() == [[True, False, True, False]]
    assert torch.isinf(top_p_filter(scores, 0.75)).tolist() == [[True, False, False, False]]
    assert not torch.isinf(top_p_filter(scores, 1.0)).any()
    assert torch.isinf(top_p_filter(scores, 0.01)).sum() == 3


def test_sampling_reproducible_and_filtered(pair):
    _, ours, _ = pair
    ids = torch.randint(6, VOCAB, (2, 4), generator=torch.Generator().manual_seed(4))
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=5, top_p=0.9)
    a = ours.generate(ids, generator=torch.Generator().manual_seed(7), **kwargs)
    b = ours.generate(ids, generator=torch.Generator().manual_seed(7), **kwargs)
    c = ours.generate(ids, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # top_k=1 sampling is greedy
    greedy = ours.generate(ids, max_new_tokens=6)
    one = ours.generate(
        ids, max_new_tokens=6, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(greedy, one)


def test_few_shot_classify_toy(pair):
    _, ours, _ = pair
    prompts = []

    def tokenize(text):
        prompts.append(text)
        return [6 + (ord(ch) % (VOCAB - 6)) for ch in text]

    demos = [("ok", "p"), ("no", "n")]
    label, scores = few_shot_classify(ours, tokenize, demos, "yes", ["p", "n"], return_scores=True)
    assert prompts[0] == format_few_shot(demos, "yes")
    assert prompts[0] == "Input: ok\nLabel: p\n\nInput: no\nLabel: n\n\nInput: yes\nLabel:"
    # Scores by hand: the full sequence's log-probabilities of the label tokens.
    for name in ("p", "n"):
        prompt, cont = tokenize(prompts[0]), tokenize(" " + name)
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = ours(ids).logits.log_softmax(-1)[0]
        manual = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cont))
        assert math.isclose(scores[name], manual, abs_tol=1e-4)
    assert label == max(scores, key=scores.get)


def test_input_errors(pair):
    _, ours, _ = pair
    with pytest.raises(ValueError, match="input_ids"):
        ours(torch.tensor([[1, VOCAB]]))
    with pytest.raises(TypeError, match="attention_mask"):
        ours(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="LEFT-padded"):
        ours.generate(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 0]]))


def test_generate_refuses_a_padding_id_outside_the_vocabulary(pair):
    # A row that ends early is fed the padding id, and generated tokens skip the id check.
    _, ours, _ = pair
    prompt = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="pad_token_id"):
        ours.generate(prompt, max_new_tokens=2, pad_token_id=VOCAB)
    assert ours.generate(prompt, max_new_tokens=2, pad_token_id=VOCAB - 1).shape[1] <= 4


def test_unchecked_ids_give_the_checked_result(pair):
    _, ours, _ = pair
    ids, mask = padded_batch(left=True)
    positions = position_ids_from_attention_mask(mask)
    model = ours.transformer
    with torch.no_grad():
        checked = model(ids, attention_mask=mask, position_ids=positions).last_hidden_state
        unchecked = model(ids, attention_mask=mask, position_ids=positions, check_ids=False)
    assert torch.equal(checked, unchecked.last_hidden_state)
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, position_ids=positions + 64)


def test_unpadded_generate_runs_without_a_mask_and_matches_an_all_ones_mask(pair):
    _, ours, _ = pair
    torch.manual_seed(3)
    prompt = torch.randint(6, VOCAB, (2, 5))
    seen = []
    handle = ours.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
    )
    try:
        plain = ours.generate(prompt, max_new_tokens=6, pad_token_id=0)
    finally:
        handle.remove()
    assert seen and all(mask is None for mask in seen)
    ones = torch.ones_like(prompt)
    masked = ours.generate(prompt, attention_mask=ones, max_new_tokens=6, pad_token_id=0)
    assert torch.equal(plain, masked)
