"""Session fixtures for the phony Windows guests and the fake virtio-win (tests/guests/windows):
built once, into GUEST_DIR/windows/<hash of the builder's sources>/, so a run after the first costs
nothing and a change to a .reg or .py file rebuilds. Loaded from tests/conftest.py (pytest_plugins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests.windows import build
from tests.locks import locked


def _cache_root() -> Path:
    from tests.conftest import GUEST_DIR  # here: conftest loads this module as a plugin

    return GUEST_DIR / "windows"


@pytest.fixture(scope="session")
def windows_build() -> build.Built:
    """Everything, built (one appliance launch, ~1-3 min under TCG) or found in the cache."""
    with locked(_cache_root().with_suffix(".lock")):  # one build, not one per xdist worker
        return build.cached(_cache_root())


@pytest.fixture(scope="session")
def windows_guests(windows_build: build.Built) -> dict[str, Path]:
    """Guest name (tests/guests/windows/README.md lists them) -> its raw disk. Shared by the whole run
    and by later runs: open it read-only, or convert a copy."""
    return windows_build.guests


@pytest.fixture(scope="session")
def virtio_win(windows_build: build.Built) -> Path:
    """The fake virtio-win directory (the RPM layout), for VIRTIO_WIN."""
    return windows_build.virtio_win


@pytest.fixture(scope="session")
def virtio_win_image(windows_build: build.Built) -> Path:
    """The fake virtio-win.iso (the ISO layout; a filesystem with no partition table), for VIRTIO_WIN."""
    return windows_build.virtio_win_iso


@pytest.fixture(scope="session")
def virt_tools_dir(windows_build: build.Built) -> Path:
    """A VIRT_TOOLS_DATA_DIR with the fake rhsrvany.exe."""
    return windows_build.virt_tools
