"""End-to-end demo: distil, prune and quantise a tiny BERT classifier, then report.

A 4-layer BERT teacher learns a token-counting task (is the sequence "positive": more
tokens from one id range than from another?); a 2-layer, half-width student is distilled
from it (Hinton soft targets); half of the student's heads are pruned by importance
(Michel et al. 2019); the result is quantised to dynamic int8. :func:`compression_report`
measures every stage: parameters, non-zeros, bytes on disk, latency and accuracy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..transformers_zoo.bert import BertConfig, BertForSequenceClassification
from ..transformers_zoo.training import TrainConfig, fit
from .distillation import Distiller, HintonObjective
from .head_pruning import prune_heads_iteratively
from .quantisation import quantize_dynamic_int8
from .report import compression_report

VOCAB, LENGTH = 60, 16


def counting_task(seed: int, n: int) -> tuple[Tensor, Tensor]:
    """``(ids (n, LENGTH), labels (n,))``: label 1 when ids 1-10 outnumber ids 11-20 (the
    other ids are filler)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
    positive = ((ids >= 1) & (ids <= 10)).sum(1)
    negative = ((ids >= 11) & (ids <= 20)).sum(1)
    return ids, (positive > negative).long()


def _bert(hidden: int, layers: int, heads: int) -> BertForSequenceClassification:
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=LENGTH,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def run_compression_demo(steps: int = 300, progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Run the demo; returns accuracies and the report table (``"report"``).

    Args:
        steps: training steps of the teacher and of the student.
        progress: tqdm bars.
        seed: seeds the models and the data.
    """
    torch.manual_seed(seed)
    train_ids, train_labels = counting_task(seed, 8192)
    test_ids, test_labels = counting_task(seed + 1, 1024)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        index = torch.arange(step * 64, step * 64 + 64) % train_ids.shape[0]
        return train_ids[index], train_labels[index]

    def task_loss(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return model(b[0], labels=b[1]).loss  # type: ignore[no-any-return]

    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            predicted = model(test_ids).logits.argmax(-1)
        return float((predicted == test_labels).float().mean())

    teacher = _bert(64, 4, 4)
    fit(
        teacher,
        task_loss,
        batch,
        TrainConfig(steps, lr=2e-3, progress=progress, description="teacher"),
    )
    student = _bert(32, 2, 4)
    Distiller(teacher, student, HintonObjective(temperature=2.0, alpha=0.7)).fit(
        batch, TrainConfig(steps, lr=3e-3, progress=progress, description="distil")
    )
    student.eval()
    pruned = copy.deepcopy(student)
    scoring = [batch(s) for s in range(4)]
    prune_heads_iteratively(pruned, task_loss, scoring, fraction=0.5, step_fraction=0.25)
    quantised = quantize_dynamic_int8(pruned)
    report = compression_report(
        teacher,
        {
            "distilled student": student,
            "+ half the heads pruned": pruned,
            "+ dynamic int8": quantised,
        },
        evaluate=accuracy,
        inputs=(test_ids[:64],),
        metric_name="accuracy",
    )
    return {
        "teacher_accuracy": report.row("original").metric,
        "student_accuracy": report.row("distilled student").metric,
        "pruned_accuracy": report.row("+ half the heads pruned").metric,
        "int8_accuracy": report.row("+ dynamic int8").metric,
        "report": "\n" + str(report),
    }


__all__ = ["counting_task", "run_compression_demo"]
