"""senet-convert from the outside: exit codes, what goes to stdout and stderr, files written.

Every failure must be exactly one line on stderr starting ``senet-convert: error:`` (exit 1, or 2
for usage errors), never a traceback, and must leave no output file and no ``.part`` temp file.
Most cases run in-process with click's CliRunner; a few run ``python -m senet.cli`` as a real
process, which is what proves that nothing else reaches the terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from senet.cli import convert_main
from tests.conftest import REPO, require_shared
from tests.reference.caffemodel_wire import read_caffemodel_layers

ERROR_PREFIX = "senet-convert: error:"
# Bundled with the package, so these tests run without ../shared.
TINY = REPO / "senet" / "examples" / "tiny_senet.caffemodel"
TINY_PROTOTXT = REPO / "senet" / "examples" / "tiny_senet.prototxt"


# ----------------------------------------------------------------------------------------- helpers
# (tests/converter/test_bad_input.py uses these too)

def run_cli(*args, cwd: Path | None = None):
    """Run senet-convert in-process; returns click's Result (stdout and stderr apart)."""
    runner = CliRunner()
    argv = [str(a) for a in args]
    if cwd is None:
        return runner.invoke(convert_main, argv, catch_exceptions=False)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(convert_main, argv, catch_exceptions=False)
    finally:
        os.chdir(old)


def run_process(*args, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m senet.cli`` as its own process (what a user's terminal sees)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "senet.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
                          **kwargs)


def assert_one_error_line(exit_code: int, stdout: str, stderr: str, expected_code: int,
                          *fragments: str) -> str:
    """The failure contract; returns the message after the prefix."""
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), line
    assert "internal error" not in line, f"an unexpected exception reached the CLI: {line}"
    assert exit_code == expected_code, (exit_code, line)
    assert stdout == "", stdout
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line[len(ERROR_PREFIX):].strip()


def assert_cli_error(result, expected_code: int, *fragments: str) -> str:
    return assert_one_error_line(result.exit_code, result.stdout, result.stderr, expected_code,
                                 *fragments)


def assert_nothing_written(folder: Path, before: set[str] | None = None) -> None:
    """No output and no temp file left in `folder` (beyond the names in `before`)."""
    if not folder.exists():
        return
    left = {p.name for p in folder.iterdir()} - (before or set())
    assert not left, f"left behind in {folder}: {sorted(left)}"


def onnx_outputs(path: Path) -> list[str]:
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


# ----------------------------------------------------------------------------------- success paths

def test_quiet_success_prints_nothing_and_writes_a_runnable_model(tmp_path):
    out = tmp_path / "tiny.onnx"
    result = run_cli(TINY, "--to", "onnx", "-q", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # no .part left
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (prob,) = session.run(None, {"data": np.zeros((1, 3, 32, 32), np.float32)})
    assert prob.shape == (1, 10)  # the prototxt's InnerProduct num_output, then Softmax


def test_output_file_is_readable_by_others(tmp_path):
    """A converted model is a normal file (umask permissions), not a private 0600 temp file."""
    out = tmp_path / "tiny.onnx"
    old = os.umask(0o022)
    try:
        result = run_cli(TINY, "--to", "onnx", "-q", "-o", out)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    mode = out.stat().st_mode & 0o777
    assert mode == 0o644, oct(mode)


def test_progress_goes_to_stderr_and_stdout_stays_empty(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "-o", tmp_path / "tiny.onnx")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip(), "without -q some progress is expected on stderr"
    assert "error" not in result.stderr


def test_default_output_is_model_stem_in_current_folder(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "-q", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_senet.onnx"]


def test_outputs_option_exposes_the_named_blobs(tmp_path):
    # "pool3" and "classifier" are blob names in tiny_senet.prototxt.
    out = tmp_path / "cut.onnx"
    result = run_cli(TINY, "--to", "onnx", "-q", "-o", out, "--outputs", "pool3,classifier")
    assert result.exit_code == 0, result.stderr
    assert onnx_outputs(out) == ["pool3", "classifier"]


def test_allow_unknown_fields_warns_and_converts(tmp_path):
    text = TINY_PROTOTXT.read_text().replace(
        "kernel_size: 3 pad: 1 stride: 1", "kernel_size: 3 pad: 1 stride: 1 warp_factor: 7", 1)
    assert "warp_factor" in text
    prototxt = tmp_path / "fork.prototxt"
    prototxt.write_text(text)
    out = tmp_path / "fork.onnx"
    result = run_cli(TINY, "--prototxt", prototxt, "--to", "onnx", "-q", "-o", out,
                     "--allow-unknown-fields")
    assert result.exit_code == 0, result.stderr
    assert out.exists()
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("senet-convert: warning:")
    assert "warp_factor" in warnings[0]


def test_inspect_real_model_lists_layers_and_parameter_count(tmp_path):
    model = require_shared("real_caffe", "mtcnn_kpzhang93", "det1.caffemodel")
    stored = read_caffemodel_layers(model)  # independent wire reader (tests/reference)
    total = sum(int(b.size) for _, _, blobs in stored for b in blobs)
    result = run_cli(model, "--inspect", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    for name, kind, blobs in stored:
        if blobs:  # every layer with weights is part of the deploy net
            assert name in result.stdout, name
    assert f"{total:,}" in result.stdout  # 6,632 for MTCNN P-Net
    assert total == 6632
    assert list(tmp_path.iterdir()) == []  # --inspect writes nothing


def test_inspect_bundled_model_counts_parameters():
    stored = read_caffemodel_layers(TINY)
    total = sum(int(b.size) for _, _, blobs in stored for b in blobs)
    result = run_cli(TINY, "--inspect")
    assert result.exit_code == 0, result.stderr
    assert f"{total:,}" in result.stdout
    for name in ("conv1", "res2/squeeze", "res2", "classifier", "prob"):
        assert name in result.stdout


# --------------------------------------------------------------------------- usage errors (exit 2)

def test_to_missing(tmp_path):
    result = run_cli(TINY, "-q", "-o", tmp_path / "x.onnx")
    assert_cli_error(result, 2, "--to")
    assert_nothing_written(tmp_path)


def test_to_unknown_format(tmp_path):
    result = run_cli(TINY, "--to", "tflite", "-q", "-o", tmp_path / "x.onnx")
    assert_cli_error(result, 2, "tflite")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("text", ["1,3,x,32", "1,3,0,32", "1,3,-32,32", ",", "", "1;3;32;32",
                                  "1.5,3,32,32"])
def test_bad_input_shape_text(tmp_path, text):
    result = run_cli(TINY, "--to", "onnx", "-q", "-o", tmp_path / "x.onnx", "--input-shape", text)
    assert_cli_error(result, 2, "--input-shape")
    assert_nothing_written(tmp_path)


def test_opset_not_an_integer(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "-q", "-o", tmp_path / "x.onnx", "--opset", "seventeen")
    assert_cli_error(result, 2, "--opset")
    assert_nothing_written(tmp_path)


def test_opset_out_of_range(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "-q", "-o", tmp_path / "x.onnx", "--opset", "3")
    assert_cli_error(result, 2, "opset 3")
    assert_nothing_written(tmp_path)


def test_model_argument_missing():
    assert_cli_error(run_cli("--to", "onnx"), 2, "MODEL")


def test_unknown_option(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "--frobnicate", "-o", tmp_path / "x.onnx")
    assert_cli_error(result, 2, "--frobnicate")
    assert_nothing_written(tmp_path)


def test_model_is_a_directory(tmp_path):
    assert_cli_error(run_cli(tmp_path, "--to", "onnx", "-q"), 2, str(tmp_path))


def test_output_is_a_directory(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "-q", "-o", tmp_path)
    assert_cli_error(result, 2)
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------------------------- real processes

def test_process_random_bytes_no_traceback(tmp_path):
    model = tmp_path / "noise.caffemodel"
    model.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, np.uint8).tobytes())
    before = {p.name for p in tmp_path.iterdir()}
    proc = run_process(model, "--to", "onnx", "-q", "-o", tmp_path / "noise.onnx")
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, 1, "noise.caffemodel")
    assert_nothing_written(tmp_path, before)


def test_process_unwritable_output_no_traceback(tmp_path):
    proc = run_process(TINY, "--to", "onnx", "-q", "-o", "/proc/senet-test-output.onnx")
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, 1,
                          "/proc/senet-test-output.onnx")
    assert not Path("/proc/senet-test-output.onnx").exists()


def test_process_usage_error_is_one_line(tmp_path):
    proc = run_process(TINY, "-q", "-o", tmp_path / "x.onnx")
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, 2, "--to")
    proc = run_process(TINY, "--to", "onnx", "--opset", "x")
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, 2, "--opset")
    assert_nothing_written(tmp_path)


def test_process_disk_full_mid_write_leaves_nothing(tmp_path):
    """A write that fails half-way (here: file-size limit, as on a full disk) removes the
    temp file and leaves no output."""
    resource = pytest.importorskip("resource", reason="needs RLIMIT_FSIZE (POSIX)")
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    assert TINY.stat().st_size > 4096  # the ONNX file needs at least the weights' bytes
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_process(TINY, "--to", "onnx", "-q", "-o", out_dir / "tiny.onnx",
                       preexec_fn=limit_file_size)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, 1, "tiny.onnx")
    assert_nothing_written(out_dir)


def test_process_success_quiet_and_debug_shows_traceback(tmp_path):
    out = tmp_path / "tiny.onnx"
    proc = run_process(TINY, "--to", "onnx", "-q", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert out.exists()
    # --debug is the documented way to get the traceback of a user error.
    bad = tmp_path / "empty.caffemodel"
    bad.write_bytes(b"")
    proc = run_process(bad, "--to", "onnx", "-q", "--debug", "-o", tmp_path / "empty.onnx")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "CaffeFormatError" in proc.stderr
    assert not (tmp_path / "empty.onnx").exists()
