"""senet-verify from the outside: exact counts on synthetic validation sets in every layout,
the gate's exit codes, the report files, and one clear line for every bad input.

The model is tests/parity/synthetic.py's nearest-prototype net: each image's top-5 is known in
advance from float64 distances, so the expected counts are facts of the test, not outputs of the
code under test. Labels go in as WNIDs (folders), shipped ILSVRC2012 ground truth (flat files:
images 1-3 are devkit classes 489, 360, 170 = sorted 65, 970, 230, from the devkit and Caffe's
val.txt) or labels files; the model's outputs are in devkit order, so a mix-up of the devkit and
sorted orders changes the counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from senet import manifest
from senet.cli import verify_main
from senet.classes import class_order
from tests.conftest import REPO
from tests.parity.synthetic import (KIT_FOX, TENCH, colour_entry, colour_for, expected_counts,
                                    use_manifest, write_colour_net, write_image)

PREFIX = "senet-verify: error:"
VAL_1_TO_3_DEVKIT = [489, 360, 170]

# (label in devkit order, rank of the label in the image's ranking; >= 5: a miss)
CASES = [(0, 0), (448, 0), (489, 0), (360, 0), (170, 0), (999, 0), (555, 0),
         (0, 1), (448, 2), (489, 4), (360, 3), (170, 1),
         (999, 5), (555, 7), (0, 6)]


def devkit_wnids() -> list[str]:
    wnids = class_order("devkit")
    # anchors from the devkit itself, so a wrong table cannot agree with these tests
    assert wnids[0] == KIT_FOX and wnids[448] == TENCH
    return wnids


@pytest.fixture
def colour_model(tmp_path, monkeypatch):
    """The colour net's caffemodel, known to the manifest as 'colour_nn' with Table 1 values
    equal to what CASES give."""
    model = write_colour_net(tmp_path)
    top1, top5 = expected_counts(CASES)
    n = len(CASES)
    entry = colour_entry(model, top1=round(100 * (n - top1) / n, 2),
                         top5=round(100 * (n - top5) / n, 2), tolerance=0.0)
    use_manifest(monkeypatch, tmp_path, entry)
    return model


def run(*args, cache=None, quiet=True):
    argv = [str(a) for a in args] + (["-q"] if quiet else [])
    if cache is not None:
        argv += ["--cache-dir", str(cache)]
    return CliRunner().invoke(verify_main, argv, catch_exceptions=False)


def assert_error(result, code: int, *fragments: str) -> str:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX), lines[0]
    assert "internal error" not in lines[0], lines[0]
    assert result.exit_code == code, (result.exit_code, lines[0])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def wnid_layout(root, cases=CASES):
    wnids = devkit_wnids()
    for k, (label, rank) in enumerate(cases):
        write_image(root / wnids[label] / f"img_{k:03d}.JPEG", colour_for(label, rank))
    return root


def verify_json(tmp_path, *args) -> dict:
    out = tmp_path / "report.json"
    result = run("--model", "colour_nn", "--json", out, "-q", "--workers", "0", *args,
                 cache=tmp_path / "cache")
    assert result.exit_code in (0, 1), result.stderr
    return json.loads(out.read_text())


# ----------------------------------------------------------------------- layouts, exact counts

def test_wnid_folders_give_the_known_counts(tmp_path, colour_model):
    val = wnid_layout(tmp_path / "val")
    report = verify_json(tmp_path, "--weights", colour_model, "--val", val)
    top1, top5 = expected_counts(CASES)
    assert report["counts"]["images"] == len(CASES)
    assert (report["counts"]["top1_correct"], report["counts"]["top5_correct"]) == (top1, top5)
    assert report["passed"] is True
    per_class = {c["class"]: c for c in report["per_class"] if c["images"]}
    assert per_class[KIT_FOX]["images"] == 3  # devkit class 0: cases (0,0), (0,1), (0,6)
    assert (per_class[KIT_FOX]["top1_correct"], per_class[KIT_FOX]["top5_correct"]) == (1, 2)


def test_flat_layout_uses_the_shipped_ground_truth(tmp_path, colour_model):
    val = tmp_path / "val"
    ranks = [0, 3, 5]  # image 1 right, image 2 in the top 5 only, image 3 wrong
    for number, (label, rank) in enumerate(zip(VAL_1_TO_3_DEVKIT, ranks), 1):
        write_image(val / f"ILSVRC2012_val_{number:08d}.JPEG", colour_for(label, rank))
    report = verify_json(tmp_path, "--weights", colour_model, "--val", val)
    assert report["counts"]["images"] == 3
    assert (report["counts"]["top1_correct"], report["counts"]["top5_correct"]) == (1, 2)


@pytest.mark.parametrize("order", ["sorted", "devkit"])
def test_labels_file_in_either_order(tmp_path, colour_model, order):
    wnids = devkit_wnids()
    index = {w: k for k, w in enumerate(sorted(wnids) if order == "sorted" else wnids)}
    val, lines = tmp_path / "val", []
    for k, (label, rank) in enumerate(CASES):
        write_image(val / f"photo_{k}.png", colour_for(label, rank))
        lines.append(f"photo_{k}.png {index[wnids[label]]}")
    labels = tmp_path / "val.txt"
    labels.write_text("\n".join(lines) + "\n")
    report = verify_json(tmp_path, "--weights", colour_model, "--val", val,
                         "--labels", labels, "--label-order", order)
    assert (report["counts"]["top1_correct"], report["counts"]["top5_correct"]) == \
        expected_counts(CASES)


def test_devkit_sorted_mix_up_is_caught(tmp_path, colour_model):
    """A val.txt in Caffe's sorted order read as devkit order must not score like the truth."""
    wnids = devkit_wnids()
    sorted_index = {w: k for k, w in enumerate(sorted(wnids))}
    val, lines = tmp_path / "val", []
    for k, (label, rank) in enumerate(CASES):
        write_image(val / f"photo_{k}.png", colour_for(label, rank))
        lines.append(f"photo_{k}.png {sorted_index[wnids[label]]}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    right = verify_json(tmp_path, "--weights", colour_model, "--val", val,
                        "--labels", tmp_path / "val.txt", "--label-order", "sorted")
    wrong = verify_json(tmp_path, "--weights", colour_model, "--val", val,
                        "--labels", tmp_path / "val.txt", "--label-order", "devkit")
    assert right["counts"]["top1_correct"] == expected_counts(CASES)[0]
    assert wrong["counts"]["top1_correct"] < right["counts"]["top1_correct"]
    assert wrong["passed"] is False


def test_limit_scores_the_first_images_in_sorted_order(tmp_path, colour_model):
    val = wnid_layout(tmp_path / "val")
    report = verify_json(tmp_path, "--weights", colour_model, "--val", val, "--limit", "4")
    wnids = devkit_wnids()
    first = sorted((f"{wnids[label]}/img_{k:03d}.JPEG", (label, rank))
                   for k, (label, rank) in enumerate(CASES))[:4]
    assert report["counts"]["images"] == 4
    assert (report["counts"]["top1_correct"], report["counts"]["top5_correct"]) == \
        expected_counts([case for _, case in first])


def test_model_is_recognised_from_the_weights(tmp_path, colour_model):
    val = wnid_layout(tmp_path / "val")
    result = run("--weights", colour_model, "--val", val, "-q", "-j", "0",
                 cache=tmp_path / "cache")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("colour_nn: 15 images scored") and "PASS" in result.stdout


# ---------------------------------------------------------------------------- the gate, reports

def test_gate_exit_codes_and_reports(tmp_path, colour_model, monkeypatch):
    val = wnid_layout(tmp_path / "val")
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    ok = run("--model", "colour_nn", "--weights", colour_model, "--val", val, "-q", "-j",
             "0", "--json", js, "--markdown", md, cache=tmp_path / "cache")
    assert ok.exit_code == 0, ok.stderr
    assert "PASS" in ok.stdout and ok.stderr == ""
    report = json.loads(js.read_text())
    for key in ("model", "passed", "top1_error", "top5_error", "counts", "per_class",
                "unreadable", "weights", "runtime", "dataset", "preprocessing", "tolerance"):
        assert key in report, key
    assert set(report["top1_error"]) >= {"percent", "ci95", "table1", "delta", "wrong", "images"}
    assert len(report["per_class"]) == 1000
    text = md.read_text()
    assert "| top-1 error % |" in text and "| top-5 error % |" in text and "**PASS**" in text

    n = len(CASES)
    top1, top5 = expected_counts(CASES)
    off = colour_entry(colour_model, "colour_off", top1=round(100 * (n - top1) / n, 2) + 1.0,
                       top5=round(100 * (n - top5) / n, 2), tolerance=0.5)
    use_manifest(monkeypatch, tmp_path, off)
    bad = run("--model", "colour_off", "--weights", colour_model, "--val", val, "-q", "-j",
              "0", "--markdown", md, cache=tmp_path / "cache")
    assert bad.exit_code == 1
    assert "FAIL" in bad.stdout and "top-1 error" in bad.stdout
    assert "**FAIL**" in md.read_text()
    usage = run("--model", "colour_nn", "--weights", colour_model, "--val", val,
                "--batch-size", "0")
    assert_error(usage, 2, "--batch-size")


def test_corrupt_images_are_counted_listed_and_gate_the_run(tmp_path, colour_model):
    val = wnid_layout(tmp_path / "val")
    (val / KIT_FOX / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (val / KIT_FOX / "empty.png").write_bytes(b"")
    (val / TENCH / "text.JPEG").write_text("not an image")
    js = tmp_path / "r.json"
    args = ["--model", "colour_nn", "--weights", colour_model, "--val", val, "-q", "-j", "1",
            "--json", js]
    result = run(*args, cache=tmp_path / "cache")
    assert result.exit_code == 1  # 3 of 18 unreadable is far above 0.1 %
    report = json.loads(js.read_text())
    assert report["counts"]["unreadable"] == 3
    assert report["counts"]["images"] == len(CASES)  # excluded from the denominator
    assert (report["counts"]["top1_correct"], report["counts"]["top5_correct"]) == \
        expected_counts(CASES)
    listed = {os.path.basename(u["path"]): u["reason"] for u in report["unreadable"]}
    assert set(listed) == {"broken.JPEG", "empty.png", "text.JPEG"}
    assert "empty" in listed["empty.png"] and "not a JPEG or PNG" in listed["text.JPEG"]
    assert any("unreadable" in r for r in report["reasons"])
    allowed = run(*args, "--allow-unreadable", cache=tmp_path / "cache")
    assert allowed.exit_code == 0, allowed.stdout


def test_summary_table_and_plot(tmp_path, colour_model, monkeypatch):
    val = wnid_layout(tmp_path / "val")
    r1, r2 = tmp_path / "a.json", tmp_path / "b.json"
    assert run("--model", "colour_nn", "--weights", colour_model, "--val", val, "-q", "-j",
               "0", "--json", r1, cache=tmp_path / "c").exit_code == 0
    off = colour_entry(colour_model, "colour_off", top1=50.0, top5=50.0, tolerance=0.1)
    use_manifest(monkeypatch, tmp_path, off)
    assert run("--model", "colour_off", "--weights", colour_model, "--val", val, "-q", "-j",
               "0", "--json", r2, cache=tmp_path / "c").exit_code == 1
    result = run("--summary", r1, r2)
    assert result.exit_code == 1  # one of the reports failed its gate
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["model", "images"]
    assert lines[2].startswith("colour_nn") and lines[2].endswith("PASS")
    assert lines[3].startswith("colour_off") and lines[3].endswith("FAIL")
    assert_error(run("--summary", tmp_path / "missing.json"), 2, "missing.json")
    (tmp_path / "x.json").write_text("{}")
    assert_error(run("--summary", tmp_path / "x.json"), 2, "not a senet-verify JSON report")
    assert_error(run("--summary"), 2, "--summary")
    pytest.importorskip("matplotlib")
    png = tmp_path / "s.png"
    assert run("--summary", r1, r2, "--plot", png).exit_code == 1
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ----------------------------------------------------------------------------------- bad input

def test_unknown_model_lists_the_known_names():
    line = assert_error(run("--model", "resnet9000", "--val", "."), 2, "resnet9000")
    assert "se_resnet50" in line and "senet154" in line


def test_missing_weights_names_file_and_folder(tmp_path):
    line = assert_error(run("--model", "se_resnet50", "--weights-dir", tmp_path,
                            "--val", tmp_path), 2, "SE-ResNet-50.caffemodel", str(tmp_path))
    assert "--weights" in line


def test_weights_that_do_not_match_the_model(tmp_path, colour_model):
    val = wnid_layout(tmp_path / "val")
    line = assert_error(run("--model", "se_resnet50", "--weights", colour_model, "--val", val,
                            cache=tmp_path / "cache"), 1, "se_resnet50", "fingerprint")
    assert "colour_nn" in line  # what the weights look like


@pytest.mark.parametrize("what", ["missing", "empty", "file", "unlabelled", "bad-labels"])
def test_bad_dataset(tmp_path, colour_model, what):
    val = tmp_path / "val"
    extra = []
    if what == "empty":
        val.mkdir()
    elif what == "file":
        val.write_text("x")
    elif what == "unlabelled":
        write_image(val / "ILSVRC2012_val_00000001.JPEG", (1, 2, 3))
        write_image(val / "holiday.JPEG", (1, 2, 3))
    elif what == "bad-labels":
        write_image(val / "a.png", (1, 2, 3))
        write_image(val / "b.png", (1, 2, 3))
        (tmp_path / "val.txt").write_text("a.png 3\n")
        extra = ["--labels", tmp_path / "val.txt"]
    result = run("--model", "colour_nn", "--weights", colour_model, "--val", val, *extra,
                 cache=tmp_path / "cache")
    fragment = {"missing": "does not exist", "empty": "no images", "file": "not a folder",
                "unlabelled": "holiday.JPEG", "bad-labels": "b.png"}[what]
    assert_error(result, 2, fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--val", "."], "--model"),
    (["--model", "colour_nn", "--limit", "0"], "--limit"),
    (["--model", "colour_nn", "--image", "x.png"], "--image"),
    (["--model", "colour_nn", "stray.json"], "stray.json"),
    (["--model", "colour_nn", "--plot", "x.png"], "--plot"),
    (["--compare", "a.onnx", "b.onnx", "--json", "x.json"], "--json"),
    (["--model", "colour_nn", "--backend", "torch", "--weights", "m.onnx"], "torch"),
    (["--model", "colour_nn", "--weights", "m.h5"], "m.h5"),
    (["--bogus"], "--bogus"),
])
def test_usage_errors(tmp_path, colour_model, args, fragment):
    assert_error(run(*[str(a).replace("m.onnx", str(tmp_path / "m.onnx")) for a in args],
                     "--weights-dir", tmp_path, cache=tmp_path / "cache"), 2, fragment)


def test_missing_val_dir_is_a_usage_error(tmp_path, colour_model):
    assert_error(run("--model", "colour_nn", "--weights", colour_model, cache=tmp_path / "c"),
                 2, "--val")


def test_a_real_process_prints_one_line(tmp_path):
    """What a terminal sees: one line, no traceback, exit 2."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "senet.parity", "--model", "se_resnet50",
                           "--weights-dir", str(tmp_path), "--val", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(PREFIX) and "SE-ResNet-50.caffemodel" in done.stderr


# ------------------------------------------------------------------------- the bundled demo

def test_bundled_demo_runs_offline_with_no_other_argument(tmp_path, monkeypatch):
    try:
        entry = manifest.lookup("digits_se_demo")
    except Exception:
        pytest.skip("the manifest has no digits_se_demo entry yet")
    monkeypatch.setenv("HOME", str(tmp_path))  # the default cache goes under ~/.cache/senet
    result = run("--model", "digits_se_demo", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    assert (tmp_path / ".cache" / "senet" / "converted").is_dir()
    # 539 held-out images, and the manifest's errors as measured
    assert "539 images scored" in result.stdout, result.stdout
    assert f"{entry.top1_error:.2f}%" in result.stdout


def test_progress_with_images_per_second_goes_to_stderr(tmp_path, colour_model):
    val = wnid_layout(tmp_path / "val")
    result = run("--model", "colour_nn", "--weights", colour_model, "--val", val, "-j", "0",
                 "-b", "4", cache=tmp_path / "cache", quiet=False)
    assert result.exit_code == 0, result.stderr
    assert "img/s" in result.stderr and f"{len(CASES)}/{len(CASES)} images" in result.stderr
    assert "img/s" not in result.stdout and result.stdout.startswith("colour_nn:")


@pytest.mark.parametrize("raised, code, fragment", [
    (KeyboardInterrupt(), 130, "interrupted; rerun the same command to resume"),
    (RuntimeError("boom"), 1, "internal error (RuntimeError: boom)"),
])
def test_interruption_and_bugs_are_one_line(tmp_path, colour_model, monkeypatch, raised, code,
                                            fragment):
    def fail(*args, **kwargs):
        raise raised
    monkeypatch.setattr("senet.parity.verify.evaluate", fail)
    result = run("--model", "colour_nn", "--val", tmp_path, cache=tmp_path / "c")
    assert result.exit_code == code
    assert result.stderr.count("\n") == 1 and fragment in result.stderr
    assert "Traceback" not in result.stderr
