"""Bad input through the whole CLI (embedded services): exit 1, one line naming the guest and
step, nothing left running."""

import pytest

from tests.conftest import children_mentioning


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("v2v: error:")]


@pytest.mark.parametrize("name, expect", [
    ("missing.img", "no such file"),
    ("garbage.img", "not a disk image"),
    ("zero-length.img", "is empty"),
])
def test_bad_input_one_line(v2v, phony, tmp_path, name, expect):
    r = v2v("-i", "disk", str(phony / name), "-o", "local", "-os", str(tmp_path))
    assert r.rc == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"v2v: error: guest {name.rsplit('.', 1)[0]}: step open: {phony / name}: {expect}")


def test_print_source(v2v, phony):
    r = v2v("-i", "disk", str(phony / "ubuntu-twodisk-1.img"), str(phony / "ubuntu-twodisk-2.img"),
            "--print-source")
    assert r.rc == 0, r.stderr
    assert r.stdout.startswith("    source name: ubuntu-twodisk-1\n")
    assert f"0: {phony}/ubuntu-twodisk-1.img (raw, 512 MiB)" in r.stdout
    assert f"1: {phony}/ubuntu-twodisk-2.img (raw, 256 MiB)" in r.stdout


def test_missing_output_directory(v2v, phony, tmp_path):
    r = v2v("-i", "disk", str(phony / "debian-single.img"), "-o", "local", "-os", str(tmp_path / "nope"))
    assert r.rc == 1
    assert error_lines(r.stderr) == [f"v2v: error: guest debian-single: step check: -os {tmp_path}/nope: "
                                     "no such directory"]


def test_existing_target_refused_before_conversion(v2v, phony, tmp_path):
    (tmp_path / "debian-single-sda").write_text("precious")
    r = v2v("-i", "disk", str(phony / "debian-single.img"), "-o", "local", "-os", str(tmp_path))
    assert r.rc == 1
    assert "step check: already exists: " in error_lines(r.stderr)[0]
    assert (tmp_path / "debian-single-sda").read_text() == "precious"


@pytest.mark.appliance
def test_disk_without_os(v2v, phony, tmp_path, workroot):
    r = v2v("-i", "disk", str(phony / "data-nofs-os.img"), "-o", "local", "-os", str(tmp_path), "--accel", "tcg")
    assert r.rc == 1
    lines = error_lines(r.stderr)
    assert lines == ["v2v: error: guest data-nofs-os: step convert: no operating system was found on the disks "
                     "(is this a guest's system disk?)"], r.stderr
    assert list(tmp_path.glob("data-nofs-os*")) == []
    assert children_mentioning(str(workroot)) == []
