"""Each service useful on its own (docs/standalone.md): `v2v open` (the input service alone, a program
on the NBD URIs), `v2v inspect` (input + convert, inspection only, disks measured) and `v2v --in-place`
(the disks converted where they are). The source of open and inspect is never written, and nothing
is left running after any of them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import nbd
import pytest
from google.protobuf import json_format

from tests.conftest import V2V, Run, children_mentioning, sha256, sockets_under
from v2v.cli.standalone import write_report
from v2v.services.input.service import InputService
from v2v.v1 import convert_pb2, input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

# The CLI: `v2v open`, `v2v inspect` and `v2v --in-place`.
COMMAND = [str(V2V)]
GUESTFISH_TIMEOUT = 300


def run(root: Path, *args: str, timeout: float = 900) -> Run:
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(root), COLUMNS="120")
    p = subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    return Run(p.returncode, p.stdout, p.stderr)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("v2v: ")]


# ---------------------------------------------------------------- v2v open


def test_open_runs_a_program_on_the_disks(phony, workroot, tmp_path):
    """@@ becomes -a URI per disk (libguestfs' form of a socket URI), writes land in the overlays, the
    exit status is the program's."""
    disks = [phony / "ubuntu-twodisk-1.img", phony / "ubuntu-twodisk-2.img"]
    before = [sha256(d) for d in disks]
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""\
        import sys, nbd
        assert sys.argv[1::2] == ["-a", "-a"], sys.argv
        for uri in sys.argv[2::2]:
            assert uri.startswith("nbd://?socket="), uri
            h = nbd.NBD()
            h.connect_uri(uri.replace("nbd://", "nbd+unix:///", 1))  # libnbd's form of it
            h.pwrite(b"\\xde\\xad" * 2048, 0)
            print(uri, h.get_size(), h.pread(2, 0).hex())
            h.shutdown()
        sys.exit(7)
        """))
    r = run(workroot, "open", "-i", "disk", *map(str, disks), "--run", f"{sys.executable} {prog} @@")
    assert r.rc == 7, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert [(Path(uri.split("socket=")[1]).name, size, data) for uri, size, data in lines] == [
        ("in0.sock", "536870912", "dead"), ("in1.sock", "268435456", "dead")]
    assert all(uri.startswith(f"nbd://?socket={workroot}/ubuntu-twodisk-1.") for uri, _, _ in lines)
    assert [sha256(d) for d in disks] == before
    assert list(workroot.iterdir()) == []  # the work directory is gone, with the overlays


def test_open_uris_are_what_libguestfs_tools_take(phony, workroot):
    """guestfish parses its -a drives without launching: a URI form it did not know would fail here
    (libguestfs 1.48 takes nbd+unix:// for a file name)."""
    r = run(workroot, "open", "-i", "disk", str(phony / "debian-single.img"),
            "--run", "guestfish --ro --format=raw @@ echo parsed")
    assert (r.rc, r.stdout) == (0, "parsed\n"), r.stderr


def test_open_without_run_serves_until_sigterm(phony, workroot):
    disk = phony / "debian-single.img"
    proc = subprocess.Popen([*COMMAND, "open", "-i", "disk", str(disk)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, V2V_WORKDIR_ROOT=str(workroot)))
    try:
        uri = proc.stdout.readline().strip()  # printed once the disks are served
        h = nbd.NBD()
        h.connect_uri(uri)
        assert h.get_size() == disk.stat().st_size
        h.shutdown()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "until Ctrl-C or SIGTERM" in err
    assert not Path(uri.split("socket=")[1]).exists()


def test_open_bad_input_is_one_line(workroot, tmp_path):
    r = run(workroot, "open", "-i", "disk", str(tmp_path / "missing.img"), "--run", "true")
    assert r.rc == 1
    assert errors(r.stderr) == [f"v2v: error: guest missing: step open: {tmp_path}/missing.img: no such file"]


# ---------------------------------------------------------------- v2v --in-place (no appliance)


def in_place_spec(kind: str, raw: Path, qcow: Path, tmp_path: Path) -> input_pb2.InputSpec:
    if kind == "disk":
        return input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(raw), str(qcow)]))
    xml = tmp_path / "g.xml"
    xml.write_text(f"""<domain type="kvm"><name>g</name><devices>
        <disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="{raw.name}"/>
          <target dev="vda"/></disk>
        <disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="{qcow}"/>
          <target dev="vdb"/></disk>
        </devices></domain>""")
    return input_pb2.InputSpec(libvirtxml=input_pb2.LibvirtXmlInput(path=str(xml)))


@pytest.mark.parametrize("kind", ["disk", "libvirtxml"])
def test_in_place_input_serves_the_disks_themselves(phony, workroot, tmp_path, kind):
    """OpenRequest.in_place: no overlay, raw (nbdkit) and qcow2 (qemu-nbd) alike."""
    raw = tmp_path / "g.img"
    shutil.copy(phony / "debian-single.img", raw)
    qcow = tmp_path / "g.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow], check=True)
    spec = in_place_spec(kind, raw, qcow, tmp_path)
    svc = InputService()

    def open_(in_place):
        wd = WorkDir.create("g", workroot)
        return wd, svc.open(input_pb2.OpenRequest(workdir=wd.name, guest="g", input=spec, in_place=in_place))

    wd, resp = open_(True)
    try:
        for sock in resp.sockets:
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///?socket={sock}")
            h.pwrite(b"in-place", 4096)
            h.flush()
            h.shutdown()
    finally:
        svc.close(wd.name)
    wd, resp = open_(False)  # read back through a fresh server: the bytes are in the files now
    try:
        for sock in resp.sockets:
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///?socket={sock}")
            assert h.pread(8, 4096) == b"in-place"
            h.shutdown()
    finally:
        svc.close(wd.name)


def test_in_place_refuses_inputs_it_cannot_write(workroot, tmp_path):
    ova = tmp_path / "guest.ova"
    ova.write_bytes(b"not read at all")
    r = run(workroot, "--in-place", "-i", "ova", str(ova), "-O", str(tmp_path / "out.json"))
    assert r.rc == 1
    assert errors(r.stderr) == ["v2v: error: guest guest: step open: --in-place: the ova input cannot write its disks "
                                "where they are, so its guests cannot be converted in place (in place takes -i disk "
                                "or -i libvirtxml; convert a copy instead)"]
    assert ova.read_bytes() == b"not read at all" and not (tmp_path / "out.json").exists()
    assert list(workroot.iterdir()) == []


def test_in_place_takes_no_output_options(workroot, phony):
    r = run(workroot, "--in-place", "-i", "disk", str(phony / "debian-single.img"), "-o", "local", "-os", "/tmp")
    assert r.rc == 2 and "unrecognized arguments: -o local -os /tmp" in r.stderr


def test_report_is_protobuf_json_with_zeros(tmp_path, capsys):
    report = convert_pb2.InspectorReport(disks=[convert_pb2.DiskEstimate(index=0, virtual_size=1 << 30)])
    assert write_report(report, str(tmp_path / "r.json")) == str(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["disks"] == [{"index": 0, "virtual_size": str(1 << 30), "allocated_size": "0"}]
    assert json_format.ParseDict(doc, convert_pb2.InspectorReport()) == report
    assert write_report(report, "-") == "(stdout)"
    assert json.loads(capsys.readouterr().out) == doc
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- v2v inspect (one appliance)


@pytest.fixture(scope="module")
def inspected(phony, tmp_path_factory):
    """`v2v inspect` of debian-single, once: (its run, its -O report, the disk's sha256 before)."""
    disk = phony / "debian-single.img"
    before = sha256(disk)
    out = tmp_path_factory.mktemp("inspect") / "report.json"
    root = Path(tempfile.mkdtemp(prefix="v2v-i.", dir="/tmp"))
    try:
        r = run(root, "inspect", "-i", "disk", str(disk), "-O", str(out), "--accel", "tcg")
        left = (children_mentioning(str(root)), sockets_under(root), list(root.iterdir()))
    finally:
        shutil.rmtree(root)
    assert r.rc == 0, r.stderr
    return r, json.loads(out.read_text()), before, left


@pytest.mark.appliance
def test_inspect_reports_the_os_and_firmware(inspected):
    _, doc, _, _ = inspected
    report = json_format.ParseDict(doc, convert_pb2.InspectorReport())
    insp = report.inspection
    assert (insp.type, insp.distro, insp.major_version, insp.root) == ("linux", "debian", 12, "/dev/sda1")
    assert insp.firmware == pb.FIRMWARE_BIOS and report.firmware == pb.FIRMWARE_BIOS
    assert report.source.name == "debian-single"
    assert not report.HasField("caps")  # nothing was converted


@pytest.mark.appliance
def test_inspect_measures_each_disk(inspected, phony):
    _, doc, _, _ = inspected
    [disk] = doc["disks"]
    assert disk["index"] == 0 and int(disk["virtual_size"]) == (phony / "debian-single.img").stat().st_size
    # data only: a few MiB of a 512 MiB disk that is mostly free space
    assert 0 < int(disk["allocated_size"]) < 64 * 1024**2


@pytest.mark.appliance
def test_inspect_shows_its_steps_changes_nothing_leaves_nothing(inspected, phony):
    r, _, before, left = inspected
    for step in ("launch", "inspect", "mount", "fstrim", "measure"):
        assert f"  {step} done in " in r.stdout
    assert "disk 0: 512 MiB, " in r.stdout
    assert sha256(phony / "debian-single.img") == before
    assert left == ([], [], [])


# ---------------------------------------------------------------- v2v --in-place (a full conversion)


def guest_file(image: Path, path: str) -> str:
    res = subprocess.run(["guestfish", "--ro", "-a", str(image), "-i", "cat", path], capture_output=True, text=True,
                         timeout=GUESTFISH_TIMEOUT, check=True)
    return res.stdout


@pytest.mark.e2e
def test_in_place_converts_the_disk_where_it_is(real_guest, workroot, tmp_path):
    """A copy of the real guest's qcow2 converted in place: its fstab names vda afterwards."""
    original = real_guest.with_suffix(".qcow2")
    mtime = original.stat().st_mtime_ns
    copy = tmp_path / "debian12-vmware.qcow2"
    shutil.copy(original, copy)
    report = tmp_path / "in-place.json"
    r = run(workroot, "--in-place", "-i", "disk", str(copy), "-O", str(report), "--accel", "tcg")
    assert r.rc == 0, r.stderr
    # The fstab named sda before (the guest's own names; read by the conversion, not by another
    # appliance launch here): the devices step renamed them.
    assert "renamed block devices in /etc/fstab" in r.stdout, r.stdout
    assert "  initramfs done in " in r.stdout and "fstrim" not in r.stdout  # the disk is the source: no trim
    assert f"    {copy}\n" in r.stdout and f"    {report}\n" in r.stdout
    fstab = guest_file(copy, "/etc/fstab")
    assert "/dev/vda" in fstab and "/dev/sda" not in fstab
    doc = json_format.Parse(report.read_text(), convert_pb2.InspectorReport())
    assert doc.inspection.distro == "debian" and doc.caps.block_bus == pb.BLOCK_BUS_VIRTIO_BLK
    assert doc.disks[0].virtual_size == 4 * 1024**3 and 0 < doc.disks[0].allocated_size < doc.disks[0].virtual_size
    assert original.stat().st_mtime_ns == mtime
    assert list(workroot.iterdir()) == []
