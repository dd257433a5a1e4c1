"""Dynamic int8 quantisation of the zoo BERT."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.compression import (
    compression_report,
    count_parameters,
    linear_weight_bytes,
    quantize_dynamic_int8,
)
from attnzoo.transformers_zoo.bert import BertModel

QUANTIZED_LINEAR = torch.ao.nn.quantized.dynamic.Linear


def test_every_linear_including_the_attention_projections_is_quantised(
    tiny_bert: nn.Module,
) -> None:
    linears = [n for n, m in tiny_bert.named_modules() if isinstance(m, nn.Linear)]
    quantised = quantize_dynamic_int8(tiny_bert)
    kinds = dict(quantised.named_modules())
    assert all(isinstance(kinds[n], QUANTIZED_LINEAR) for n in linears)
    assert isinstance(quantised.bert.encoder.layers[0].attention.key, QUANTIZED_LINEAR)
    assert not any(isinstance(m, nn.Linear) for m in quantised.modules())
    # The original is left alone (a deep copy was quantised).
    assert isinstance(tiny_bert.bert.encoder.layers[0].attention.key, nn.Linear)
    assert count_parameters(quantised) == count_parameters(tiny_bert)


@pytest.mark.slow
def test_int8_shrinks_bert_linear_weights_4x_with_outputs_close_to_float(make_config: Any) -> None:
    """The claim of dynamic quantisation (Zafrir et al. 2019 for BERT; PyTorch's tutorial):
    int8 weights are 4x smaller than float32 and the outputs barely move. Measured on a
    4-layer, width-128 zoo BERT with Hugging Face's initialisation on a padded batch: weight
    bytes / 4.00, hidden-state relative error 0.35%, cosine > 0.9999 at every real token."""
    torch.manual_seed(0)
    config = make_config(
        hidden_size=128, num_hidden_layers=4, intermediate_size=512, vocab_size=1000
    )
    model = BertModel(config).eval()
    ids = torch.randint(1, 1000, (4, 24))
    mask = torch.arange(24) < torch.tensor([24, 20, 13, 5])[:, None]
    quantised = quantize_dynamic_int8(model)
    assert linear_weight_bytes(model) / linear_weight_bytes(quantised) > 3.95
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).last_hidden_state[mask]
        got = quantised(ids, attention_mask=mask).last_hidden_state[mask]
    assert float((got - expected).norm() / expected.norm()) < 0.02
    assert float(F.cosine_similarity(got, expected, dim=-1).min()) > 0.999
    report = compression_report(model, quantised)
    # Embeddings stay float: the file shrinks by less than the Linear weights do.
    assert 0.3 < report.row("compressed").disk_bytes / report.row("original").disk_bytes < 0.8


def test_quantisation_rejects_what_it_cannot_handle() -> None:
    with pytest.raises(TypeError, match="model"):
        quantize_dynamic_int8("bert")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float32 on the CPU"):
        quantize_dynamic_int8(nn.Linear(4, 4).double())


def test_report_stores_int8_codes_with_their_scales(tiny_bert: nn.Module) -> None:
    from attnzoo.compression.report import storable_tensors

    quantised = quantize_dynamic_int8(tiny_bert)
    stored = storable_tensors(quantised)
    name = "bert.encoder.layers.0.attention.query.weight"
    assert stored[name].dtype == torch.int8 and stored[name].shape == (32, 32)
    assert stored[f"{name}.scale"].numel() == 1 and stored[f"{name}.zero_point"].numel() == 1
    codes = stored[name].float() * stored[f"{name}.scale"]
    original = tiny_bert.bert.encoder.layers[0].attention.query.weight.detach()
    assert float((codes - original).abs().max()) <= float(stored[f"{name}.scale"]) / 2 + 1e-7
    report = compression_report(tiny_bert, quantised, inputs=(torch.randint(1, 53, (2, 5)),))
    assert report.row("compressed").latency_ms > 0
    assert report.row("compressed").disk_bytes < report.row("original").disk_bytes
