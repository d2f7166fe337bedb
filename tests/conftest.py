"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# The third-party evaluation data lives next to the repository (../shared/data) and is never
# committed, so tests that need it must skip where it is absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The evaluation data folder; skips the test where it is not present."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"evaluation data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA
