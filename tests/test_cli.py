"""The command line becomes a typed job (pure logic)."""

import pytest

from v2v.cli.args import build_job, conversion_parser, root_choice
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
    with pytest.raises(V2VError, match="no input given"):
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


def test_luks_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    j = job("g.img", "-o", "null", "--key", "/dev/sda2:file:k", "--key", "all:file:/etc/all.key",
            "--key", "0d5e-uuid:clevis")
    assert [(k.device, k.WhichOneof("kind"), k.file) for k in j.convert.keys] == [
        ("/dev/sda2", "file", str(tmp_path / "k")), ("", "file", "/etc/all.key"), ("0d5e-uuid", "clevis", "")]
    with pytest.raises(V2VError, match=r"--key /dev/sda2:key:\.\.\.: a key on the command line is visible"):
        job("g.img", "-o", "null", "--key", "/dev/sda2:key:s3cret")
    for bad in ("/dev/sda2", "/dev/sda2:file:", ":file:k", "all:clevis:x", "all:tpm"):
        with pytest.raises(V2VError, match="expected DEVICE:file:FILE"):
            job("g.img", "-o", "null", "--key", bad)


def test_output_types_and_options():
    j = job("g.img", "-o", "libvirt", "-oc", "qemu:///session", "-os", "images", "-oo", "domain-type=qemu")
    assert (j.output.libvirt.uri, j.output.libvirt.pool, j.output.libvirt.domain_type) == (
        "qemu:///session", "images", "qemu")
    j = job("g.img", "-o", "kubevirt", "-os", "/d", "-oo", "disk=pvc-a", "-oo", "disk=pvc-b", "-oo", "data-volumes")
    assert list(j.output.kubevirt.disk_claims) == ["pvc-a", "pvc-b"] and j.output.kubevirt.data_volumes
    j = job("g.img", "-o", "qemu", "-os", "/d", "-oo", "qemu-boot", "-of", "qcow2", "-oo", "compressed")
    assert j.output.qemu.boot and j.output.compressed
    assert job("g.img", "-o", "json", "-os", "/d", "-oo", "json-disks-pattern=%{GuestName}.img").output.json \
        .disks_pattern == "%{GuestName}.img"
    assert job("g.img", "-o", "null").output.WhichOneof("kind") == "null"


def test_unknown_output_option_is_an_error():
    with pytest.raises(V2VError, match="unknown -oo option.*qemu-boot"):
        job("g.img", "-o", "local", "-os", "/d", "-oo", "qemu-boot")


def test_network_options():
    j = job("g.img", "-o", "null", "-n", "default", "-b", "lan:br0",
            "--mac", "00:50:56:a1:b2:c3:ip:192.0.2.10,192.0.2.1,24")
    assert [(m.source_network, m.target) for m in j.networks.mappings] == [("", "default"), ("lan", "br0")]
    assert j.networks.static_ips[0].address == "192.0.2.10"


def test_input_types_and_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    j = job("-i", "ova", "g.ova", "-io", "ova-checksums=off", "-o", "null")
    assert j.input.ova.path == str(tmp_path / "g.ova") and j.input.ova.skip_checksums
    assert not job("-i", "ova", "g.ova", "-o", "null").input.ova.skip_checksums
    j = job("-i", "vmx", "-it", "ssh", "ssh://root@esx1/vmfs/volumes/ds1/g/g.vmx", "-io", "vmx-identity=id_ed25519",
            "-io", "vmx-known-hosts=off", "-ip", "pw.txt", "-o", "null")
    assert j.input.vmx.location == "ssh://root@esx1/vmfs/volumes/ds1/g/g.vmx"
    assert (j.input.vmx.identity_file, j.input.vmx.password_file) == (str(tmp_path / "id_ed25519"),
                                                                      str(tmp_path / "pw.txt"))
    assert j.input.vmx.insecure_host_key
    assert job("-i", "libvirtxml", "dom.xml", "-o", "null").input.libvirtxml.path == str(tmp_path / "dom.xml")


def test_input_mistakes_are_one_line_errors():
    with pytest.raises(V2VError, match="takes one argument"):
        job("-i", "ova", "a.ova", "b.ova", "-o", "null")
    with pytest.raises(V2VError, match="-it ssh: expected ssh://"):
        job("-i", "vmx", "-it", "ssh", "g.vmx", "-o", "null")
    with pytest.raises(V2VError, match="unknown -io option"):
        job("-i", "disk", "g.img", "-io", "ova-checksums=off", "-o", "null")
    with pytest.raises(V2VError, match="expected on or off"):
        job("-i", "ova", "g.ova", "-io", "ova-checksums=maybe", "-o", "null")
