"""README's Python API example runs as written and shows what the programs show.

The ``pycon`` blocks are run as doctests in a fresh interpreter, from a folder laid out like
the repository root (README says to run them there), with HOME pointing into the test's folder
so the caches stay out of the real one. Then senet-verify's JSON report for the same model
must hold the numbers the example prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from senet.cli import verify_main
from tests.conftest import REPO

README = REPO / "README.md"


def pycon_blocks() -> list[str]:
    return re.findall(r"```pycon\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_api_example():
    text = "".join(pycon_blocks())
    for call in ("senet.load_caffe(", "senet.convert(", "senet.to_torch(", "senet.verify("):
        assert call in text, call


def test_readme_python_examples_run_as_shown(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "senet").symlink_to(REPO / "senet")
    script = tmp_path / "run_readme.py"
    script.write_text(
        "import doctest, sys\n"
        "parser, runner = doctest.DocTestParser(), doctest.DocTestRunner()\n"
        "for k, text in enumerate(sys.argv[1:]):\n"
        "    runner.run(parser.get_doctest(text, {}, f'README block {k}', 'README.md', 0))\n"
        "result = runner.summarize(verbose=False)\n"
        "sys.exit(1 if result.failed or not result.attempted else 0)\n")
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env.pop("PYTHONPATH", None)  # `senet` comes from the folder the example runs in
    done = subprocess.run([sys.executable, str(script), *pycon_blocks()], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert (tmp_path / "tiny.onnx").is_file()


def test_the_cli_reports_the_numbers_the_example_shows(tmp_path):
    shown = re.search(r">>> report\.passed, report\.top1_error\.percent, "
                      r"report\.top5_error\.percent\n\((True|False), ([\d.]+), ([\d.]+)\)",
                      README.read_text())
    assert shown, "README's verify example lost its printed numbers"
    out = tmp_path / "report.json"
    result = CliRunner().invoke(verify_main, ["--model", "digits_se_demo", "-q", "--json",
                                              str(out), "--cache-dir", str(tmp_path)])
    assert result.exit_code == (0 if shown[1] == "True" else 1), result.stderr
    report = json.loads(out.read_text())
    assert (report["top1_error"]["percent"], report["top5_error"]["percent"]) == \
        (float(shown[2]), float(shown[3]))
    summary = re.search(r">>> print\(report\.summary\(\)\)\n(.*?)\n\n", README.read_text(),
                        flags=re.S)
    assert summary and result.stdout.strip() == summary[1].strip()
