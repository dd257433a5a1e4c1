"""TaBERT: content snapshot, linearisation, vertical attention, pooling, MCP and selection."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.tabert import (
    TaBERTColumnSelector,
    TaBERTForPreTraining,
    TaBERTModel,
    Table,
    collate_tables,
    content_snapshot,
    linearize_row,
    mask_columns,
    run_tabert_demo,
    table_qa_examples,
    table_tokenizer,
    tiny_tabert_config,
)

TABLE = Table(
    [("city", "text"), ("country", "text"), ("population", "real")],
    [
        ["paris", "france", "2100000"],
        ["oslo", "norway", "700000"],
        ["lyon", "france", "500000"],
        ["porto", "portugal", "230000"],
    ],
)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    examples = table_qa_examples(200, seed=1)
    extra = table_qa_examples(1, seed=2)
    extra[0].table = TABLE
    return table_tokenizer(examples + extra, vocab_size=300)


def test_content_snapshot_ranks_rows_by_overlap() -> None:
    rows = content_snapshot("what is the population of lyon in france ?", TABLE, k=2)
    assert rows == [TABLE.rows[0], TABLE.rows[2]]  # both share "france", lyon also its name
    rows = content_snapshot("how many people live in lyon ?", TABLE, k=3)
    assert TABLE.rows[2] in rows and len(rows) == 3
    # K = 1: a synthetic row of each column's best-matching cell.
    assert content_snapshot("is oslo in france ?", TABLE, k=1) == [["oslo", "france", "2100000"]]
    assert len(content_snapshot("x", TABLE, k=10)) == 4


def test_linearization_layout(tokenizer) -> None:  # type: ignore[no-untyped-def]
    row = linearize_row(tokenizer, "where is paris ?", TABLE.columns, TABLE.rows[0])
    tokens = [tokenizer.id_to_token(i) for i in row.ids]
    assert tokens[0] == "[CLS]" and tokens[row.utterance[1]] == "[SEP]"
    start, end = row.columns[0]
    assert "".join(t.replace("##", "") for t in tokens[start:end]) == "city|text|paris"
    assert tokens[end] == "[SEP]" and tokens[-1] == "[SEP]"
    n0, n1 = row.names[2]
    assert "".join(t.replace("##", "") for t in tokens[n0:n1]) == "population|real"
    assert row.token_type_ids[: row.utterance[1] + 1] == [0] * (row.utterance[1] + 1)
    assert set(row.token_type_ids[row.utterance[1] + 1 :]) == {1}


def _model(tokenizer) -> TaBERTModel:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return TaBERTModel(
        tiny_tabert_config(tokenizer.get_vocab_size(), hidden_size=32, layers=1)
    ).eval()


def test_vertical_attention_mixes_rows_and_padding_is_ignored(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _model(tokenizer)
    small = Table(TABLE.columns[:2], [r[:2] for r in TABLE.rows[:2]])
    batch = collate_tables(tokenizer, ["where is oslo ?", "where is paris ?"], [TABLE, small], k=3)
    assert batch.row_mask.tolist() == [[True] * 3, [True, True, False]]
    assert batch.column_mask.tolist() == [[True] * 3, [True, True, False]]
    out = model(batch)
    alone = model(collate_tables(tokenizer, ["where is paris ?"], [small], k=3))
    n = alone.token_states.shape[2]
    # The padded table's results do not depend on what it was batched with.
    torch.testing.assert_close(out.columns[1, :2], alone.columns[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.utterance[1], alone.utterance[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        out.token_states[1, :2, :n], alone.token_states[0], rtol=1e-4, atol=1e-5
    )
    assert torch.all(out.columns[1, 2] == 0) and torch.all(out.token_states[1, 2] == 0)
    # Vertical attention: changing another row's cell changes this row's states.
    edited = Table(small.columns, [small.rows[0], ["bergen", "japan"]])
    changed = model(collate_tables(tokenizer, ["where is paris ?"], [edited], k=3))
    assert not torch.allclose(changed.token_states[0, 0], alone.token_states[0, 0], atol=1e-5)


def test_column_vector_is_the_mean_over_cells_then_rows(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _model(tokenizer)
    batch = collate_tables(tokenizer, ["where is oslo ?"], [TABLE], k=3)
    out = model(batch)
    h = out.token_states[0]
    expected = torch.stack([h[k][batch.column_token_mask[0, k, 1]].mean(0) for k in range(3)]).mean(
        0
    )
    torch.testing.assert_close(out.columns[0, 1], expected, rtol=1e-5, atol=1e-6)
    utterance = torch.stack([h[k][batch.utterance_mask[0, k]].mean(0) for k in range(3)]).mean(0)
    torch.testing.assert_close(out.utterance[0], utterance, rtol=1e-5, atol=1e-6)


def test_masked_column_prediction_masks_headers_in_every_row(tokenizer) -> None:  # type: ignore[no-untyped-def]
    batch = collate_tables(tokenizer, ["where is oslo ?"], [TABLE], k=3)
    mask_id = tokenizer.token_to_id("[MASK]")
    masked = mask_columns(
        batch, torch.tensor([[0, 0, 1]]), mask_id, tokenizer.get_vocab_size(), probability=0.0
    )
    assert int(masked.masked.sum()) == 1  # at least one column per table
    c = int(masked.masked[0].nonzero())
    for k in range(3):
        header = batch.name_mask[0, k, c]
        assert torch.all(masked.batch.input_ids[0, k][header] == mask_id)
        assert torch.equal(masked.batch.input_ids[0, k][~header], batch.input_ids[0, k][~header])
    header_ids = batch.input_ids[0, 0][batch.name_mask[0, 0, c]]
    assert torch.equal(masked.name_targets[0, c].nonzero().flatten(), header_ids.unique())
    config = tiny_tabert_config(tokenizer.get_vocab_size(), hidden_size=32, layers=1)
    loss = TaBERTForPreTraining(config)(masked)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()


def test_bad_input_is_rejected(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="type"):
        Table([("a", "date")], [["1"]])
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        Table([("a", "text"), ("b", "text")], [["1"]])
    with pytest.raises(ValueError, match="utterances"):
        collate_tables(tokenizer, ["a", "b"], [TABLE], k=3)
    model = TaBERTColumnSelector(tiny_tabert_config(tokenizer.get_vocab_size(), 32, 1))
    batch = collate_tables(tokenizer, ["where is oslo ?"], [TABLE], k=3)
    with pytest.raises(ValueError, match="answer"):
        model(batch, torch.tensor([3]))
    with pytest.raises(TypeError, match="batch"):
        model.tabert(batch.input_ids)  # type: ignore[arg-type]
    bad = collate_tables(tokenizer, ["where is oslo ?"], [TABLE], k=3)
    bad.attention_mask = bad.attention_mask.long()
    with pytest.raises(TypeError, match="attention_mask"):
        model.tabert(bad)


@pytest.mark.slow
def test_column_selection_learns_on_generated_table_qa() -> None:
    # Column selection after 40 MCP and 80 selection steps: seed 0 reaches 0.90, seed 1
    # 0.74, seed 2 0.90 (chance 0.25); the MCP loss roughly halves.
    metrics = run_tabert_demo(steps=80, progress=False, seed=0)
    assert metrics["mcp_loss_final"] < 0.6 * metrics["mcp_loss_initial"]
    assert metrics["selection_accuracy"] > 0.6 > 2 * metrics["chance_accuracy"]
