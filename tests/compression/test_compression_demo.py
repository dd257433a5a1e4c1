"""The end-to-end compression demo and the report it prints."""

from __future__ import annotations

from attnzoo.compression.demo import counting_task, run_compression_demo


def test_counting_task_is_balanced_enough_to_learn() -> None:
    ids, labels = counting_task(0, 2000)
    assert ids.shape == (2000, 16) and 0.3 < float(labels.float().mean()) < 0.7
    again, _ = counting_task(0, 2000)
    assert (again == ids).all()


def test_demo_runs_every_stage_and_reports_it() -> None:
    metrics = run_compression_demo(steps=10, progress=False)
    for key in ("teacher_accuracy", "student_accuracy", "pruned_accuracy", "int8_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    lines = metrics["report"].strip().splitlines()
    assert lines[0].startswith("| model | parameters | non-zeros | disk (KiB) | latency (ms) |")
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == ["original", "distilled student", "+ half the heads pruned", "+ dynamic int8"]
