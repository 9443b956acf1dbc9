"""Exit codes: each error class carries one, both programs use it, README's table says it."""

from __future__ import annotations

import inspect
import re

from click.testing import CliRunner

from senet import errors
from senet.cli import convert_main, verify_main
from senet.parity.runners import WeightsMismatchError
from tests.conftest import REPO
from tests.test_cli import TINY

README = REPO / "README.md"


def error_classes() -> list[type]:
    found = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
             if issubclass(cls, errors.SenetError) and cls is not errors.SenetError]
    return found + [WeightsMismatchError]


def readme_table() -> dict[str, int]:
    """Error class name -> the exit code README's table gives it."""
    section = README.read_text().split("## Exit status", 1)[1].split("\n## ", 1)[0]
    codes = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            for name in re.findall(r"`(\w+Error)`", cells[3]):
                codes[name] = int(cells[0])
    return codes


def test_every_error_class_is_in_the_readme_table_with_its_code():
    table = readme_table()
    assert {cls.__name__: cls.exit_code for cls in error_classes()} == table


def one_error_line(result, prog: str) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), result.stderr
    assert "internal error" not in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def test_a_truncated_caffemodel_exits_1_from_both_programs(tmp_path):
    """A broken model file is the thing under test being wrong: 1 from senet-convert, and 1
    from senet-verify too (its 2 is for a run that could not be set up)."""
    broken = tmp_path / "broken.caffemodel"
    broken.write_bytes(TINY.read_bytes()[:5000])
    runner = CliRunner()
    converted = runner.invoke(convert_main, [str(broken), "--to", "onnx", "-q",
                                             "-o", str(tmp_path / "x.onnx")])
    assert converted.exit_code == 1
    one_error_line(converted, "senet-convert")
    verified = runner.invoke(verify_main, ["--model", "digits_se_demo", "--weights",
                                           str(broken), "-q", "--cache-dir", str(tmp_path)])
    assert verified.exit_code == 1
    assert "broken.caffemodel" in one_error_line(verified, "senet-verify")
    assert not (tmp_path / "x.onnx").exists()


def test_a_missing_data_set_exits_2(tmp_path):
    result = CliRunner().invoke(verify_main, ["--model", "digits_se_demo", "--val",
                                              str(tmp_path / "nowhere"), "-q",
                                              "--cache-dir", str(tmp_path)])
    assert result.exit_code == errors.DatasetError.exit_code == 2
    assert "does not exist" in one_error_line(result, "senet-verify")


def test_usage_errors_exit_2_from_both_programs(tmp_path):
    runner = CliRunner()
    assert runner.invoke(convert_main, [str(TINY)]).exit_code == 2  # no --to
    assert runner.invoke(verify_main, ["--plot", "x.png"]).exit_code == 2
