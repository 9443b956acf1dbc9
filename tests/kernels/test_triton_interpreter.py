"""Runs interpreter_cases.py (the Triton kernels on CPU) in a child process.

The child gets TRITON_INTERPRET=1 before it imports Triton; this process, and with it every other
test and any real GPU use of Triton, stays as it was.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("interpreter_cases.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider",
               "--rootdir", str(REPO_ROOT)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"interpreter cases failed:\n{report}"
    assert " passed" in report and "skipped" not in report, report
