"""The ``attnzoo`` console command."""

from __future__ import annotations

import importlib.util

import pytest

from attnzoo.cli import main


def test_info_lists_the_normalizers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "attnzoo" in out
    for name in ("softmax", "sparsemax", "entmax15", "entmax", "hardmax", "gumbel"):
        assert name in out


def test_normalize_prints_one_row_per_normalizer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["normalize", "2", "1", "0.5", "-1"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].split()[0] == "scores"
    sparsemax_row = next(r for r in rows if r.startswith("sparsemax"))
    # sparsemax of [2, 1, 0.5, -1] puts all the mass on the first score.
    assert [float(w) for w in sparsemax_row.split()[1:]] == [1.0, 0.0, 0.0, 0.0]
    softmax_row = next(r for r in rows if r.startswith("softmax"))
    assert abs(sum(float(w) for w in softmax_row.split()[1:]) - 1.0) < 2e-3


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot_normalizers_writes_a_png(tmp_path) -> None:
    out = tmp_path / "normalizers.png"
    assert main(["plot-normalizers", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_command_exits_with_usage() -> None:
    with pytest.raises(SystemExit):
        main(["no-such-command"])


def test_demo_list_names_every_demo(capsys: pytest.CaptureFixture[str]) -> None:
    from attnzoo.cli import DEMOS

    assert main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    for name in DEMOS:
        assert name in out


def test_every_demo_is_a_function_with_the_demo_signature() -> None:
    import importlib
    import inspect

    from attnzoo.cli import DEMOS, demo_module

    for module_name, function_name, _ in DEMOS.values():
        module = importlib.import_module(demo_module(module_name))
        params = inspect.signature(getattr(module, function_name)).parameters
        assert {"steps", "progress", "seed"} <= set(params), function_name


def test_demo_runs_and_prints_its_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "pointer", "--steps", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out
