"""Parity reports: JSON (everything, per-class accuracy included), Markdown, the terminal
summary, and the table / PNG bar chart over several models' JSON reports.

The JSON report is the interchange format: ``senet-verify --summary`` reads only these files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import senet
from senet.errors import DatasetError, UsageError
from senet.files import atomic_output

REPORT_FORMAT = "senet-verify/1"


def _pct(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)


def _error_block(rate, table: float) -> dict:
    return {"percent": _pct(rate.percent), "wrong": rate.wrong, "images": rate.images,
            "ci95": [_pct(rate.ci95[0]), _pct(rate.ci95[1])], "table1": table,
            "delta": _pct(rate.percent - table)}


def build_report(ev) -> dict:
    """The JSON-serialisable report of a senet.parity.verify.Evaluation."""
    counts, gate, entry = ev.counts, ev.gate, ev.entry
    per_class = []
    for k, name in enumerate(ev.classes):
        n = int(counts.class_images[k])
        per_class.append({
            "index": k, "class": name, "images": n,
            "top1_correct": int(counts.class_top1[k]), "top5_correct": int(counts.class_top5[k]),
            "top1_accuracy": round(int(counts.class_top1[k]) / n, 6) if n else None,
            "top5_accuracy": round(int(counts.class_top5[k]) / n, 6) if n else None})
    return {
        "format": REPORT_FORMAT,
        "senet_version": senet.__version__,
        "model": entry.name,
        "title": getattr(entry, "title", None) or entry.name,
        "passed": gate.passed,
        "reasons": list(gate.reasons),
        "tolerance": gate.tolerance,
        "top1_error": _error_block(gate.top1, gate.table1_top1),
        "top5_error": _error_block(gate.top5, gate.table1_top5),
        "counts": {"images": counts.images, "top1_correct": counts.top1,
                   "top5_correct": counts.top5, "unreadable": counts.unreadable,
                   "listed": ev.images_listed, "selected": ev.images_selected},
        "unreadable": [{"path": path, "reason": reason} for path, reason in ev.unreadable],
        "unreadable_fraction": round(gate.unreadable_fraction, 8),
        "weights": {"path": str(ev.weights), "format": ev.weights_format,
                    "sha256": ev.weights_sha256},
        "runtime": {"backend": ev.backend, "device": ev.device, "world_size": ev.world_size,
                    "seconds": round(ev.seconds, 3), "images_computed": ev.computed},
        "dataset": {"val_dir": str(ev.val_dir), "listing_digest": ev.listing_digest,
                    "class_order": entry.class_order, "classes": len(ev.classes)},
        "preprocessing": ev.preprocessing,
        "per_class": per_class,
    }


@dataclass(frozen=True)
class ErrorRate:
    """A top-k error as measured, beside the published figure (percentages)."""

    percent: float | None  # None when no image was scored
    wrong: int
    images: int
    ci95: tuple[float | None, float | None]  # Wilson interval
    table1: float
    delta: float | None  # percent - table1, in points


@dataclass(frozen=True)
class Report:
    """What ``senet.verify`` returns: the JSON report's figures as attributes, and the whole
    JSON report as ``json`` (what ``--json`` writes and ``--summary`` reads)."""

    model: str
    title: str
    passed: bool
    reasons: tuple[str, ...]
    tolerance: float
    top1_error: ErrorRate
    top5_error: ErrorRate
    images: int  # scored
    unreadable: int
    json: dict = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, report: dict) -> "Report":
        def rate(block: dict) -> ErrorRate:
            return ErrorRate(block["percent"], block["wrong"], block["images"],
                             tuple(block["ci95"]), block["table1"], block["delta"])
        return cls(model=report["model"], title=report["title"], passed=report["passed"],
                   reasons=tuple(report["reasons"]), tolerance=report["tolerance"],
                   top1_error=rate(report["top1_error"]), top5_error=rate(report["top5_error"]),
                   images=report["counts"]["images"], unreadable=report["counts"]["unreadable"],
                   json=report)

    def summary(self) -> str:
        """The lines senet-verify prints after a run."""
        return "\n".join(summary_lines(self.json))

    def markdown(self) -> str:
        return markdown(self.json)

    def write_json(self, path: str | os.PathLike) -> None:
        write_json(path, self.json)

    def write_markdown(self, path: str | os.PathLike) -> None:
        write_text(path, markdown(self.json))


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_lines(report: dict) -> list[str]:
    """What the terminal shows after a run (stdout)."""
    c = report["counts"]
    lines = [f"{report['title']}: {c['images']} images scored"
             + (f", {c['unreadable']} unreadable" if c["unreadable"] else "")]
    for label, key in (("top-1", "top1_error"), ("top-5", "top5_error")):
        block = report[key]
        low, high = block["ci95"]
        lines.append(f"  {label} error {_fmt(block['percent'])}% "
                     f"(95% CI {_fmt(low)}-{_fmt(high)}; {block['wrong']} of {block['images']})"
                     f"  Table 1 {block['table1']:.2f}%  delta {_fmt(block['delta'], 2)}")
    verdict = "PASS" if report["passed"] else "FAIL"
    lines.append(f"  {verdict}: within {report['tolerance']:.2f} points of Table 1"
                 if report["passed"] else f"  {verdict}: " + "; ".join(report["reasons"]))
    return lines


def markdown(report: dict) -> str:
    c, rt = report["counts"], report["runtime"]
    rows = ["| metric | ours | 95 % CI | Table 1 | Δ (points) | tolerance |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, key in (("top-1 error %", "top1_error"), ("top-5 error %", "top5_error")):
        b = report[key]
        rows.append(f"| {label} | {_fmt(b['percent'])} | {_fmt(b['ci95'][0])}–"
                    f"{_fmt(b['ci95'][1])} | {b['table1']:.2f} | {_fmt(b['delta'])} | "
                    f"±{report['tolerance']:.2f} |")
    text = [f"# Parity: {report['title']}", "",
            f"**{'PASS' if report['passed'] else 'FAIL'}**"
            + ("" if report["passed"] else ": " + "; ".join(report["reasons"])), "", *rows, "",
            f"- images scored: {c['images']} (listed {c['listed']}, selected {c['selected']}); "
            f"unreadable: {c['unreadable']} (excluded from the errors)",
            f"- weights: `{Path(report['weights']['path']).name}` "
            f"({report['weights']['format']}, sha256 `{report['weights']['sha256'][:16]}…`)",
            f"- runtime: {rt['backend']} on {rt['device']}, {rt['world_size']} process(es), "
            f"{rt['seconds']:.1f} s", ""]
    if report["unreadable"]:
        text += ["## Unreadable images", "", "| file | reason |", "| --- | --- |"]
        text += [f"| `{u['path']}` | {u['reason'].replace('|', '/')} |"
                 for u in report["unreadable"]]
        text.append("")
    return "\n".join(text)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a report atomically (senet.files.atomic_output); UsageError when it cannot be."""
    with atomic_output(path, "report", UsageError) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | os.PathLike, report: dict) -> None:
    write_text(path, json.dumps(report, indent=1) + "\n")


def load_report(path: str | os.PathLike) -> dict:
    """A JSON report written by senet-verify; DatasetError for anything else."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError("report file does not exist", where=str(path)) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"not a JSON report ({type(exc).__name__})", where=str(path)) from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise DatasetError("not a senet-verify JSON report (no 'format': "
                           f"'{REPORT_FORMAT}')", where=str(path))
    return report


def summary_table(reports: list[dict]) -> str:
    """Plain-text table over several models: ours vs Table 1, with the verdicts."""
    header = (f"{'model':24s} {'images':>7s} {'top-1':>7s} {'Table1':>7s} {'Δ':>6s} "
              f"{'top-5':>7s} {'Table1':>7s} {'Δ':>6s}  result")
    lines = [header, "-" * len(header)]
    for r in reports:
        t1, t5 = r["top1_error"], r["top5_error"]
        lines.append(f"{r['title'][:24]:24s} {r['counts']['images']:7d} {_fmt(t1['percent']):>7s}"
                     f" {t1['table1']:7.2f} {_fmt(t1['delta']):>6s} {_fmt(t5['percent']):>7s} "
                     f"{t5['table1']:7.2f} {_fmt(t5['delta']):>6s}  "
                     f"{'PASS' if r['passed'] else 'FAIL'}")
    return "\n".join(lines)


def plot_summary(reports: list[dict], path: str | os.PathLike) -> None:
    """PNG bar chart: top-1 and top-5 error per model, ours (with 95 % CI) beside Table 1."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib", hint="pip install 'senet[plot]'") from None
    import numpy as np
    names = [r["title"] for r in reports]
    x = np.arange(len(reports))
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.4 * len(reports) + 3), 4.2))
    for ax, key, label in ((axes[0], "top1_error", "top-1 error %"),
                           (axes[1], "top5_error", "top-5 error %")):
        ours = np.array([np.nan if r[key]["percent"] is None else r[key]["percent"]
                         for r in reports])
        low = np.array([r[key]["ci95"][0] or np.nan for r in reports])
        high = np.array([r[key]["ci95"][1] or np.nan for r in reports])
        table = np.array([r[key]["table1"] for r in reports])
        ax.bar(x - 0.2, ours, 0.4, label="ours", color="#3b6ea8",
               yerr=np.vstack([ours - low, high - ours]), capsize=3)
        ax.bar(x + 0.2, table, 0.4, label="Table 1", color="#c9a227")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("senet-verify: measured ImageNet error vs the paper's Table 1")
    fig.tight_layout()
    try:
        with atomic_output(path, "plot", UsageError) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
