"""Evaluation under torchrun: two CPU processes (gloo) give the counts of one process.

Each rank scores its shard of the sorted listing; counts, per-class counts and the unreadable
list are combined; only rank 0 prints and writes the report. The run is launched the way a user
would: ``python -m torch.distributed.run --standalone --nproc-per-node 2 ...``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from senet.parity.distributed import Group, from_env
from tests.conftest import REPO
from tests.parity.synthetic import colour_for, expected_counts, write_colour_net, write_image

pytest.importorskip("torch.distributed")
SCRIPT = Path(__file__).with_name("colour_verify.py")
CASES = [(0, 0), (448, 1), (489, 0), (360, 4), (170, 6), (999, 0), (555, 2), (0, 3),
         (448, 0), (489, 5), (360, 0)]


def test_shards_cover_the_listing_once():
    for count in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            parts = [Group(rank=r, world=world).shard(count) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_environment_of_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert from_env() == Group()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    group = from_env()
    assert (group.rank, group.world, group.local_rank, group.local_world) == (3, 4, 1, 2)
    assert not group.is_main and not group.active


def launch(args: list, nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run([*prefix, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=180)


def test_two_processes_count_like_one(tmp_path):
    from senet.classes import class_order
    wnids = class_order("devkit")
    model = write_colour_net(tmp_path)
    val = tmp_path / "val"
    for k, (label, rank) in enumerate(CASES):
        write_image(val / wnids[label] / f"{k:03d}.png", colour_for(label, rank))
    (val / wnids[0] / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n....")
    common = ["--val", val, "-q", "--workers", "0", "--batch-size", "2",
              "--allow-unreadable"]
    one = launch([model, *common, "--json", tmp_path / "one.json", "--cache-dir",
                  tmp_path / "c1"], 1, tmp_path)
    two = launch([model, *common, "--json", tmp_path / "two.json", "--cache-dir",
                  tmp_path / "c2"], 2, tmp_path)
    assert one.returncode == 1, one.stderr  # the entry's Table 1 says 0 % error
    assert two.returncode != 0, two.stderr
    assert "Traceback" not in one.stderr
    r1 = json.loads((tmp_path / "one.json").read_text())
    r2 = json.loads((tmp_path / "two.json").read_text())
    assert r2["runtime"]["world_size"] == 2 and r1["runtime"]["world_size"] == 1
    assert (r1["counts"]["top1_correct"], r1["counts"]["top5_correct"]) == expected_counts(CASES)
    assert r2["counts"] == r1["counts"]
    assert r2["per_class"] == r1["per_class"]
    assert r2["unreadable"] == r1["unreadable"] and len(r1["unreadable"]) == 1
    assert r2["runtime"]["images_computed"] == len(CASES)
    # only rank 0 prints its summary
    assert two.stdout.count("images scored") == 1, two.stdout
    # a rerun with another number of processes resumes from the same predictions
    again = launch([model, *common, "--json", tmp_path / "again.json", "--cache-dir",
                    tmp_path / "c2"], 1, tmp_path)
    r3 = json.loads((tmp_path / "again.json").read_text())
    assert r3["runtime"]["images_computed"] == 0 and r3["counts"] == r1["counts"], again.stderr
