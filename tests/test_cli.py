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
