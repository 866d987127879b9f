"""Run-wide locks and once-per-run fixtures, for pytest-xdist: `make test` runs the suite in two
worker processes, each with its own session fixtures, and some of those build or start something
that exists once on the machine (a cached guest, libvirtd) or that costs minutes to make twice."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def locked(path: Path, shared: bool = False) -> Iterator[Callable[[], None]]:
    """Holds an flock on `path` (created) inside the block: exclusive, or shared with other shared
    holders. It yields a function that makes a shared lock exclusive, waiting for the other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield lambda: fcntl.flock(f, fcntl.LOCK_EX)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this run that every xdist worker sees (the parent of the workers' basetemps)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The directory `name`, filled by `make` in the first worker to ask; the others wait and reuse it.
    A `make` that fails leaves nothing, so the next worker to ask tries again (and fails the same way)."""
    top = run_dir(tmp_path_factory)
    out = top / name
    with locked(top / f"{name}.lock"):
        if not (out / ".complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            try:
                make(out)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
            (out / ".complete").touch()
    return out
