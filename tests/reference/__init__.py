"""Independent float64 NumPy reference of Caffe's forward pass.

Nothing in this package imports ``senet``: it exists so that the converter's
outputs can be checked against a second, separately written implementation of
Caffe semantics.  Modules:

- ``prototxt_text``   protobuf text-format parser (schema-free)
- ``caffemodel_wire`` protobuf wire-format reader for .caffemodel weights
- ``caffe_forward``   the forward pass, layer by layer
- ``random_weights``  seeded, data-dependent weights and inputs
- ``timm_legacy``     timm's legacy SENet forward, re-implemented to check timm checkpoints
"""

from pathlib import Path

# The shared fixture folder lives beside the repository checkout
# (…/main/tests/reference/__init__.py -> …/shared).
SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"


def shared_missing_reason(*parts: str) -> str | None:
    """Return None when ``SHARED_DIR/parts`` exists, else a human-readable skip reason.

    Kept free of pytest so that non-test code can use it too.
    """
    path = SHARED_DIR.joinpath(*parts)
    if path.exists():
        return None
    return f"shared fixtures not available: {path} does not exist"
