"""``python -m senet.parity ...`` is ``senet-verify ...`` (what torchrun launches with ``-m``)."""

from senet.cli import verify_main

if __name__ == "__main__":
    verify_main(prog_name="senet-verify")
