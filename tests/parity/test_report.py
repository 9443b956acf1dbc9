"""Report files are written whole or not at all (senet.files.atomic_output)."""

from __future__ import annotations

import json

import pytest

from senet.errors import UsageError
from senet.parity.report import plot_summary, write_json, write_text


def _report(title: str) -> dict:
    block = {"percent": 7.5, "ci95": [6.0, 9.0], "table1": 7.48}
    return {"title": title, "top1_error": block, "top5_error": dict(block, table1=2.0)}


def test_a_failing_report_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = tmp_path / "r.md"
    write_text(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text(path, "new " + "\udc80")  # fails inside the write, after the temp file
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_an_unwritable_report_is_one_usage_error_and_leaves_nothing(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()  # a folder where the report should go: the final rename fails
    with pytest.raises(UsageError, match="cannot write report"):
        write_json(folder, {"format": "x"})
    with pytest.raises(UsageError, match="cannot write report"):
        write_json(tmp_path / "missing" / "r.json", {"format": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and not any(folder.iterdir())
    write_json(tmp_path / "r.json", {"format": "x"})
    assert json.loads((tmp_path / "r.json").read_text()) == {"format": "x"}


def test_a_failing_plot_write_leaves_no_partial_file(tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "plot.png"
    folder.mkdir()
    with pytest.raises(UsageError, match="cannot write plot"):
        plot_summary([_report("a"), _report("b")], folder)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"] and not any(folder.iterdir())
    plot_summary([_report("a")], tmp_path / "ok.png")
    assert (tmp_path / "ok.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
