"""The small outputs (-o null, -o json) and the options every file output shares (-oo compressed,
--overwrite), against real qemu-img, nbdkit and qemu-nbd."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from tests.test_output import finalize, make_target, setup, write_through_nbd
from tests.windows_targets import server2022_emulated_q35
from v2v.errors import V2VError
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb

MiB = 1024**2



def test_null_discards_and_writes_nothing(service, workdir, tmp_path):
    output = output_pb2.OutputSpec(null=output_pb2.NullOutput())
    resp = setup(service, workdir, output, make_target(64 * MiB, 16 * MiB))
    assert resp.target_is_zero and [d.path for d in resp.disks] == ["", ""]
    write_through_nbd(list(resp.sockets))
    assert list(finalize(service, workdir, output).files) == []


def test_json_is_the_target_description(service, workdir, tmp_path):
    output = output_pb2.OutputSpec(format="qcow2", json=output_pb2.JsonOutput(directory=str(tmp_path)))
    target = make_target(16 * MiB, 16 * MiB)
    target.static_ips.add(mac="00:50:56:a1:b2:c3", address="192.0.2.10", prefix_length=24)
    setup(service, workdir, output, target)
    files = list(finalize(service, workdir, output).files)
    assert files == [str(tmp_path / "guest-sda"), str(tmp_path / "guest-sdb"), str(tmp_path / "guest.json")]
    doc = json.loads((tmp_path / "guest.json").read_text())
    assert (doc["format"], doc["version"]) == ("v2v-target", 1)
    back = json_format.ParseDict(doc["target"], pb.TargetMeta())
    assert [d.path for d in back.disks] == files[:2] and back.disks[1].format == "qcow2"
    assert back.static_ips[0].address == "192.0.2.10" and back.source.name == "guest"


def test_json_has_the_windows_capabilities(service, workdir, tmp_path):
    output = output_pb2.OutputSpec(json=output_pb2.JsonOutput(directory=str(tmp_path)))
    target = server2022_emulated_q35(str(tmp_path))
    target.ClearField("disks")  # setup makes them
    setup(service, workdir, output, target)
    finalize(service, workdir, output)
    doc = json.loads((tmp_path / "guest.json").read_text())["target"]
    assert doc["inspection"]["type"] == "windows"
    assert doc["inspection"]["windows"]["osinfo"] == "win2k22"
    caps = doc["caps"]
    assert caps["hyperv"] is True and caps["emulated_devices"] is True and "rtc_utc" not in caps  # false: left out
    assert (caps["block_bus"], caps["net_bus"], caps["machine"]) == ("BLOCK_BUS_IDE", "NET_BUS_RTL8139", "MACHINE_Q35")
    # The disks as the target has them: q35 has no IDE, so the guest's IDE disks are on its SATA.
    assert [(d["bus"], d["device"]) for d in doc["disks"]] == [("BLOCK_BUS_SATA", "sda"), ("BLOCK_BUS_SATA", "sdb")]


def test_json_disks_pattern(service, workdir, tmp_path):
    pattern = "disks/%{GuestName}-%{DiskNo}-%{DiskDeviceName}.img"
    output = output_pb2.OutputSpec(json=output_pb2.JsonOutput(directory=str(tmp_path), disks_pattern=pattern))
    resp = setup(service, workdir, output, make_target(MiB, MiB))
    assert [d.path for d in resp.disks] == [str(tmp_path / "disks/guest-1-sda.img"),
                                            str(tmp_path / "disks/guest-2-sdb.img")]
    finalize(service, workdir, output)


def test_json_disks_pattern_cannot_escape_the_directory(service, workdir, tmp_path):
    output = output_pb2.OutputSpec(json=output_pb2.JsonOutput(directory=str(tmp_path / "out"),
                                                              disks_pattern="../%{GuestName}"))
    (tmp_path / "out").mkdir()
    with pytest.raises(V2VError, match="outside"):
        setup(service, workdir, output, make_target(MiB))


def test_compressed_qcow2(service, workdir, tmp_path):
    output = output_pb2.OutputSpec(format="qcow2", compressed=True,
                                   local=output_pb2.LocalOutput(directory=str(tmp_path)))
    resp = setup(service, workdir, output, make_target(8 * MiB))
    text = (b"v2v compresses well " * 52428).ljust(8 * MiB, b"\0")  # ~1 MiB of text, then zeros
    subprocess.run(["nbdcopy", "--flush", "-", f"nbd+unix:///?socket={resp.sockets[0]}"], input=text, check=True)
    files = finalize(service, workdir, output).files
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", files[0]], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["actual-size"] < 512 * 1024  # 1 MiB of data in less: compressed (qemu 7.2's map cannot say)
    expected = tmp_path / "expected.raw"
    expected.write_bytes(text)
    subprocess.run(["qemu-img", "compare", "-F", "raw", files[0], str(expected)], check=True, capture_output=True)


def test_compressed_needs_qcow2(service, workdir, tmp_path):
    output = output_pb2.OutputSpec(format="raw", compressed=True, local=output_pb2.LocalOutput(directory=str(tmp_path)))
    with pytest.raises(V2VError, match="compressed needs -of qcow2"):
        setup(service, workdir, output, make_target(MiB))


def test_overwrite_replaces_existing_files(service, workdir, tmp_path):
    (tmp_path / "guest-sda").write_text("old")
    (tmp_path / "guest.xml").write_text("old")
    output = output_pb2.OutputSpec(overwrite=True, local=output_pb2.LocalOutput(directory=str(tmp_path)))
    setup(service, workdir, output, make_target(MiB))
    finalize(service, workdir, output)
    assert (tmp_path / "guest-sda").stat().st_size == MiB and "<domain" in (tmp_path / "guest.xml").read_text()


def test_the_documented_script_turns_it_into_virt_install(service, workdir, tmp_path):
    output = output_pb2.OutputSpec(format="qcow2", json=output_pb2.JsonOutput(directory=str(tmp_path)))
    target = make_target(16 * MiB)
    target.caps.machine = pb.MACHINE_Q35
    target.nics.add(mac="52:54:00:12:34:56", network="lan", network_type=pb.NETWORK_TYPE_BRIDGE,
                    model=pb.NIC_MODEL_VIRTIO)
    setup(service, workdir, output, target)
    finalize(service, workdir, output)
    script = Path(__file__).resolve().parent.parent / "docs/examples/target-to-virt-install.py"
    cmd = subprocess.run([sys.executable, script, tmp_path / "guest.json"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert cmd[:2] == ["virt-install", "--import"] and "q35" in cmd
    assert f"path={tmp_path}/guest-sda,format=qcow2,bus=scsi" in cmd
    assert "bridge=lan,model=virtio,mac=52:54:00:12:34:56" in cmd
