"""The command line becomes a typed job (pure logic)."""

import pytest

from v2v.coordinator.cli import build_job, conversion_parser, root_choice
from v2v.errors import V2VError
from v2v.v1 import convert_pb2, output_pb2


def job(*argv: str):
    return build_job(conversion_parser().parse_intermixed_args(list(argv)))


def test_virt_v2v_syntax():
    j = job("-i", "disk", "/a/g.img", "-if", "qcow2", "-o", "local", "-os", "/out", "-of", "qcow2",
            "-oa", "preallocated", "-on", "new", "--parallel", "2", "--accel", "tcg")
    assert list(j.input.disk.paths) == ["/a/g.img"] and j.input.disk.format == "qcow2"
    assert j.output.local.directory == "/out" and j.output.format == "qcow2" and j.output.name == "new"
    assert j.output.allocation == output_pb2.ALLOCATION_PREALLOCATED
    assert j.copy.parallel == 2
    assert j.convert.accelerator == convert_pb2.ACCELERATOR_TCG


def test_files_may_come_anywhere_and_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    j = job("-o", "disk", "a.img", "-os", "out", "b.img")
    assert list(j.input.disk.paths) == [str(tmp_path / "a.img"), str(tmp_path / "b.img")]
    assert j.output.local.directory == str(tmp_path / "out")


def test_missing_pieces_are_one_line_errors():
    with pytest.raises(V2VError, match="no input file"):
        job("-o", "local", "-os", "/out")
    with pytest.raises(V2VError, match="-os DIR"):
        job("g.img", "-o", "local")
    assert job("g.img", "--print-source").print_source


def test_root_choice():
    assert root_choice("ask").WhichOneof("kind") == "single"
    assert root_choice("first").first
    assert root_choice("/dev/sda2").device == "/dev/sda2"
    with pytest.raises(V2VError):
        root_choice("sda2")
