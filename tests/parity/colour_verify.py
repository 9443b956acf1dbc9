"""``senet-verify`` with the synthetic colour net known to the manifest as 'colour_nn', for
runs in fresh processes (torchrun): ``python colour_verify.py CAFFEMODEL [senet-verify args]``."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from senet import manifest  # noqa: E402
from senet.cli import verify_main  # noqa: E402
from tests.parity.synthetic import colour_entry, with_entries  # noqa: E402

if __name__ == "__main__":
    entry = colour_entry(Path(sys.argv[1]))
    known = with_entries(entry)
    manifest.load_manifest = lambda path=None: known  # until senet-verify has --manifest
    verify_main(["--model", "colour_nn", "--weights", sys.argv[1], *sys.argv[2:]],
                prog_name="senet-verify")
