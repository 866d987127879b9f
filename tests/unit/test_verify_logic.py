"""The boot check's pure logic: what a console line means, the probe's JSON line read into
Observed, strict mode's mismatches, the request filled from a TargetMeta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from v2v.services.verify.console import LOGIN, ConsoleLog, classify
from v2v.services.verify.probe import parse_probe
from v2v.services.verify.service import boot_spec, expectations, expected_mounts, expected_nics, mismatches
from v2v.services.verify.summary import summary
from v2v.v1 import types_pb2 as pb
from v2v.v1 import verify_pb2 as vpb


@pytest.mark.parametrize(("line", "sign"), [
    ("[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
     vpb.VERIFY_CAUSE_PANIC),
    ("Gave up waiting for root file system device.  Common problems:", None),
    ("ALERT!  /dev/sda3 does not exist.  Dropping to a shell!", vpb.VERIFY_CAUSE_INITRAMFS_SHELL),
    ("(initramfs) ", vpb.VERIFY_CAUSE_INITRAMFS_SHELL),
    ("You are in emergency mode. After logging in, type \"journalctl -xb\" to view", vpb.VERIFY_CAUSE_EMERGENCY_MODE),
    ("Give root password for maintenance", vpb.VERIFY_CAUSE_EMERGENCY_MODE),
    ("debian12-vmware login: ", LOGIN),
    ("debian12-vmware login:", LOGIN),
    ("[  OK  ] Reached target multi-user.target - Multi-User System.", None),
    ("Last login: Thu Dec  3 10:00:00 on ttyS0", None),
    ("No bootable device.", vpb.VERIFY_CAUSE_NO_BOOT_DEVICE),
])
def test_console_classifier(line: str, sign: int | str | None) -> None:
    assert classify(line) == sign


def test_console_log_reads_as_it_grows_and_keeps_a_prompt_without_newline(tmp_path: Path) -> None:
    f = tmp_path / "console.log"
    f.write_bytes(b"")
    log = ConsoleLog(f)
    with open(f, "ab") as w:
        w.write(b"line one\r\nline t")
        w.flush()
        assert log.lines() == ["line one"]
        w.write(b"wo\r\n\r\nhost login: ")
        w.flush()
        assert log.lines() == ["line two", "", "host login: "]
        w.write(b"".join(b"%d\n" % i for i in range(60)))
    log.lines()
    assert log.last_lines() == [str(i) for i in range(10, 60)]


PROBE_LINE = {
    "v2v_probe": 1, "root": "/dev/vda3",
    "mounts": [{"mountpoint": "/", "device": "/dev/vda3", "fstype": "ext4"},
               {"mountpoint": "/boot", "device": "/dev/vda1", "fstype": "ext4"}],
    "nics": [{"ifindex": 1, "ifname": "lo", "address": "00:00:00:00:00:00",
              "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
             {"ifindex": 2, "ifname": "ens2", "address": "00:50:56:A1:B2:C3",
              "addr_info": [{"family": "inet", "local": "192.0.2.10", "prefixlen": 24},
                            {"family": "inet6", "local": "fe80::250:56ff:fea1:b2c3", "prefixlen": 64}]}],
    "failed_units": ["foo.service"],
    "os": {"id": "debian", "name": "Debian GNU/Linux 12 (bookworm)", "version": "12", "kernel": "6.1.0-50-amd64",
           "hostname": "debian12-vmware"},
    "firmware": "uefi",
}


def test_probe_line_parsed() -> None:
    obs = parse_probe(json.dumps(PROBE_LINE))
    assert obs is not None
    assert obs.root_device == "/dev/vda3"
    assert [(m.mountpoint, m.device, m.fstype) for m in obs.mounts] == [("/", "/dev/vda3", "ext4"),
                                                                         ("/boot", "/dev/vda1", "ext4")]
    assert [(n.name, n.mac, list(n.addresses)) for n in obs.nics] == [
        ("ens2", "00:50:56:a1:b2:c3", ["192.0.2.10/24", "fe80::250:56ff:fea1:b2c3/64"])]
    assert list(obs.failed_units) == ["foo.service"] and obs.firmware == pb.FIRMWARE_UEFI
    assert (obs.os.id, obs.os.version, obs.os.kernel, obs.os.hostname) == ("debian", "12", "6.1.0-50-amd64",
                                                                            "debian12-vmware")


def test_summary_says_what_the_probe_saw() -> None:
    """The verify step's note: root, the block-device mounts, NICs with their addresses but the
    link-local ones, failed units."""
    obs = parse_probe(json.dumps(PROBE_LINE))
    res = vpb.VerifyResult(observed_by=vpb.OBSERVED_BY_PROBE, seconds_to_userspace=41.24, observed=obs)
    res.observed.mounts.add(mountpoint="/run/credentials/x.service", device="ramfs", fstype="ramfs")
    assert summary(res) == ("booted in 41.2 s (observed by probe); firmware UEFI; root /dev/vda3; mounts / "
                            "/dev/vda3, /boot /dev/vda1; nics ens2 00:50:56:a1:b2:c3 192.0.2.10/24; failed units: "
                            "foo.service")


def test_probe_fallback_nics_without_addresses() -> None:
    """`ip -j` missing: the probe lists /sys/class/net names and MACs, no addr_info entries."""
    obs = parse_probe(json.dumps({"v2v_probe": 1, "root": "/dev/sda1", "mounts": [], "failed_units": [], "os": {},
                                  "nics": [{"ifname": "eth0", "address": "52:54:00:00:00:01", "addr_info": []}]}))
    assert obs is not None and [(n.name, list(n.addresses)) for n in obs.nics] == [("eth0", [])]


@pytest.mark.parametrize("noise", ["", "garbage", "{\"v2v_probe\":1,\"root\":", "[1,2]", "{\"other\":1}"])
def test_probe_noise_ignored(noise: str) -> None:
    assert parse_probe(noise) is None


def test_strict_mismatches_named() -> None:
    obs = parse_probe(json.dumps(PROBE_LINE))
    assert obs is not None
    req = vpb.VerifyRequest(expected_nics=[vpb.ExpectedNic(name="ens2", addresses=["192.0.2.10/24", "192.0.2.11/24"]),
                                           vpb.ExpectedNic(name="ens3")],
                            expected_mounts=["/", "/boot", "/home"])
    found = mismatches(req, vpb.OBSERVED_BY_PROBE, obs)
    K = vpb.Mismatch
    assert [(m.kind, m.name) for m in found] == [(K.KIND_ADDRESS_MISSING, "ens2"), (K.KIND_NIC_MISSING, "ens3"),
                                                (K.KIND_MOUNT_MISSING, "/home"), (K.KIND_FAILED_UNIT, "foo.service")]
    assert found[0].expected == "192.0.2.11/24"
    assert mismatches(req, vpb.OBSERVED_BY_CONSOLE, vpb.Observed())[0].kind == K.KIND_NOT_OBSERVABLE


def test_request_filled_from_target_meta() -> None:
    target = pb.TargetMeta(firmware=pb.FIRMWARE_UEFI, caps=pb.GuestCaps(block_bus=pb.BLOCK_BUS_VIRTIO_SCSI,
                                                                       secure_boot=True),
                           disks=[pb.TargetDisk(path="/o/sda", format="qcow2")],
                           nics=[pb.Nic(mac="52:54:00:00:00:01", model=pb.NIC_MODEL_VIRTIO)])
    spec = boot_spec(vpb.VerifyRequest(guest="g", target=target), "tcg")
    assert [(d.path, d.format, d.bus) for d in spec.disks] == [("/o/sda", "qcow2", pb.BLOCK_BUS_VIRTIO_SCSI)]
    assert (spec.firmware, spec.secure_boot, spec.machine) == (pb.FIRMWARE_UEFI, True, pb.MACHINE_Q35)
    assert [n.mac for n in spec.nics] == ["52:54:00:00:00:01"]


def test_strict_expects_what_the_target_kept() -> None:
    """With only the TargetMeta, strict mode expects each NIC by the name the network step kept, with
    the static addresses kept for its MAC (no prefix: virt-v2v's /24), and every fstab mountpoint;
    what the request names itself comes first and wins for its NIC."""
    target = pb.TargetMeta(nics=[pb.Nic(mac="52:54:00:00:00:01", guest_name="ens192"),
                                 pb.Nic(mac="52:54:00:00:00:02", guest_name="ens224"),
                                 pb.Nic(mac="52:54:00:00:00:03")],
                           static_ips=[pb.StaticIp(mac="52:54:00:00:00:01", address="192.0.2.10"),
                                       pb.StaticIp(mac="52:54:00:00:00:01", address="2001:db8::a", prefix_length=48)],
                           inspection=pb.Inspection(mountpoints={"/": "/dev/sda3", "/boot": "/dev/sda1"}))
    req = vpb.VerifyRequest(target=target, expected_nics=[vpb.ExpectedNic(name="ens224")], expected_mounts=["/srv"])
    assert [(n.name, n.mac, list(n.addresses)) for n in expected_nics(req)] == [
        ("ens224", "", []), ("ens192", "52:54:00:00:00:01", ["192.0.2.10/24", "2001:db8::a/48"])]
    assert expected_mounts(req) == ["/srv", "/", "/boot"]
    assert expectations(req) == ("NIC ens224; NIC ens192 (52:54:00:00:00:01, 192.0.2.10/24, 2001:db8::a/48); "
                                 "mounts /srv, /, /boot; no failed unit")
