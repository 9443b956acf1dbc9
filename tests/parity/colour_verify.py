"""``senet-verify`` with the synthetic colour net known to the manifest as 'colour_nn', for
runs in fresh processes (torchrun): ``python colour_verify.py CAFFEMODEL [senet-verify args]``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from senet.cli import verify_main  # noqa: E402
from tests.parity.synthetic import colour_entry, write_manifest  # noqa: E402

if __name__ == "__main__":
    # each rank its own manifest file: none reads another's half-written one
    known = write_manifest(Path(tempfile.mkdtemp()), colour_entry(Path(sys.argv[1])))
    verify_main(["--model", "colour_nn", "--weights", sys.argv[1], "--manifest", str(known),
                 *sys.argv[2:]], prog_name="senet-verify")
