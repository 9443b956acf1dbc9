"""Shared test helpers: where ../shared is, and skipping cleanly when it is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.reference is imported as a package from the repo root
    sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared"

try:  # torch is the optional [torch] extra: without it the kernel tests are not collected
    import torch  # noqa: F401
except ImportError:
    collect_ignore_glob = ["kernels/*"]
FIXTURES = SHARED / "fixtures"


def require_shared(*parts: str) -> Path:
    """Path under ../shared/fixtures, or skip the test with the reason."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared (not present beside this checkout): {path}")
    return path
