"""Target faults (docs/reliability.md): output storage that fills up during the copy, or that cannot
be written at all. The services' own code in this process (open, check, setup, copy, finalize: no
conversion), a data disk as the source. Each fault is one named error of the step it hit, the
partial target is removed, the source is unchanged and no NBD server is left."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import child_servers, sha256, tiny_filesystem, write_target
from v2v.errors import V2VError
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb

MiB = 1 << 20


def data_disk(path: Path) -> Path:
    """16 MiB, one partition holding 8 MiB of incompressible data: more than the 3 MiB storage
    below can hold (the partition table makes it a disk the input accepts without -if raw)."""
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(MiB)
        f.write(os.urandom(8 * MiB))
    subprocess.run(["sfdisk", "-q", str(path)], input="label: dos\n,,L\n", text=True, check=True)
    return path


def local(directory: Path) -> output_pb2.OutputSpec:
    return output_pb2.OutputSpec(format="raw", local=output_pb2.LocalOutput(directory=str(directory)))


def test_storage_that_fills_during_the_copy(tmp_path: Path, workroot: Path) -> None:
    source = data_disk(tmp_path / "data.img")
    before = sha256(source)
    with tiny_filesystem(tmp_path / "tiny") as tiny:
        with pytest.raises(V2VError) as exc:
            write_target(pb.TargetMeta(name="full", source=pb.Source(name="full")), [source], local(tiny), workroot)
        err = exc.value
        assert (err.code, err.step, err.disk) == (pb.ERROR_CODE_NO_SPACE, "copy", 0), err
        assert "is full (No space left on device): make room on the output storage" in err.message, err.message
        assert "\n" not in err.message
        assert list(tiny.iterdir()) == [], "the partial target was not removed"
    assert sha256(source) == before
    assert child_servers() == []


def test_storage_that_cannot_be_written(tmp_path: Path, workroot: Path) -> None:
    source = data_disk(tmp_path / "data.img")
    with tiny_filesystem(tmp_path / "ro", options=",ro") as ro:
        with pytest.raises(V2VError) as exc:
            write_target(pb.TargetMeta(name="ro", source=pb.Source(name="ro")), [source], local(ro), workroot)
        err = exc.value
        assert (err.code, err.step) == (pb.ERROR_CODE_BAD_INPUT, "check"), err
        assert err.message == f"-os {ro}: cannot write to it (a read-only filesystem)", err.message
        assert list(ro.iterdir()) == []
    assert child_servers() == []
