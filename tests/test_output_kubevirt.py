"""-o kubevirt: the VirtualMachine YAML, checked against our schema of the KubeVirt API subset it
uses (tests/data/kubevirt-virtualmachine.schema.json), and the output service writing it."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.windows_targets import (
    server2022_bios,
    server2022_emulated_q35,
    win7_32bit,
    win11_uefi_secure_boot,
    xp_emulated,
)
from v2v.drives import device_name, drive_letters
from v2v.errors import V2VError
from v2v.services.output.base import OUTPUTS
from v2v.services.output.kubevirt import ANNOTATION_NAME, KubevirtOutput, dns_name
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb

MiB = 1024**2
GiB = 1024**3
WINDOWS_HYPERV = {"relaxed": {}, "vapic": {}, "vpindex": {}, "runtime": {}, "synic": {}, "synictimer": {}, "reset": {},
                  "frequencies": {}, "tlbflush": {}, "ipi": {}, "spinlocks": {"spinlocks": 8191}}
WINDOWS_TIMERS = {"hpet": {"present": False}, "pit": {"tickPolicy": "delay"}, "rtc": {"tickPolicy": "catchup"},
                  "hyperv": {}}
SCHEMA = json.loads((Path(__file__).parent / "data" / "kubevirt-virtualmachine.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def make_target(name="guest", bus=pb.BLOCK_BUS_VIRTIO_BLK, machine=pb.MACHINE_Q35, firmware=pb.FIRMWARE_BIOS,
                ndisks=1, net_bus=pb.NET_BUS_VIRTIO_NET, nics=None, **source_fields):
    nics = [pb.Nic(network="default", network_type=pb.NETWORK_TYPE_NETWORK)] if nics is None else nics
    source = pb.Source(name=name, hypervisor=pb.HYPERVISOR_VMWARE, memory=2 * GiB, vcpus=2, nics=nics,
                       disks=[pb.SourceDisk(index=i, virtual_size=GiB) for i in range(ndisks)], **source_fields)
    caps = pb.GuestCaps(block_bus=bus, net_bus=net_bus, machine=machine, arch="x86_64", virtio_1_0=True,
                        virtio_rng=True, virtio_balloon=True, rtc_utc=True)
    target = pb.TargetMeta(name=name, source=source, caps=caps, firmware=firmware)
    target.disks.extend(pb.TargetDisk(index=i, path=f"/var/tmp/out/{name}-sd{drive_letters(i)}", format="raw",
                                      virtual_size=GiB, device=device_name(bus, i), bus=bus) for i in range(ndisks))
    return target


def kubevirt_spec(directory="/var/tmp/out", fmt="", **options) -> output_pb2.OutputSpec:
    return output_pb2.OutputSpec(format=fmt, kubevirt=output_pb2.KubevirtOutput(directory=str(directory),
                                                                                 **options))


def plugin() -> KubevirtOutput:
    found, _ = OUTPUTS.lookup(kubevirt_spec())
    assert isinstance(found, KubevirtOutput)
    return found


def valid(doc: dict) -> dict:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)]
    assert errors == [], "\n".join(errors)
    return doc


def describe(target: pb.TargetMeta, spec: output_pb2.OutputSpec | None = None) -> dict:
    """The plugin's YAML for the target, parsed, checked against the schema and for the name pairings
    (disk <-> volume, interface <-> network) that the schema cannot express."""
    texts = plugin().descriptions(spec or kubevirt_spec(), target, Path("/var/tmp/out"))
    assert list(texts) == [f"{target.name}.yaml"]
    doc = valid(yaml.safe_load(texts[f"{target.name}.yaml"]))
    vmi = doc["spec"]["template"]["spec"]
    devices = vmi["domain"]["devices"]
    assert [d["name"] for d in devices["disks"]] == [v["name"] for v in vmi["volumes"]]
    assert [i["name"] for i in devices.get("interfaces", [])] == [n["name"] for n in vmi.get("networks", [])]
    return doc


def vmi_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def domain(doc: dict) -> dict:
    return vmi_spec(doc)["domain"]


def test_bios_q35_virtio_two_disks_two_nics():
    target = make_target(ndisks=2, nics=[
        pb.Nic(mac="52:54:00:12:34:56", network="default", network_type=pb.NETWORK_TYPE_NETWORK),
        pb.Nic(network="lan", network_type=pb.NETWORK_TYPE_NETWORK)])
    doc = describe(target)
    assert (doc["apiVersion"], doc["kind"]) == ("kubevirt.io/v1", "VirtualMachine")
    assert doc["metadata"]["name"] == "guest"
    assert doc["spec"]["runStrategy"] == "Halted" and "running" not in doc["spec"]
    dom = domain(doc)
    # Where virt-v2v went wrong: clock and features belong to the domain, not to its resources.
    assert dom["clock"] == {"utc": {}}
    assert dom["features"] == {"acpi": {}, "apic": {}}
    assert "clock" not in dom.get("resources", {}) and "features" not in dom.get("resources", {})
    assert dom["cpu"] == {"cores": 2}
    assert dom["memory"] == {"guest": "2048Mi"}
    assert dom["machine"] == {"type": "q35"}
    assert dom["firmware"] == {"bootloader": {"bios": {}}}
    devices = dom["devices"]
    assert devices["disks"] == [{"name": "disk-0", "disk": {"bus": "virtio"}, "bootOrder": 1},
                                {"name": "disk-1", "disk": {"bus": "virtio"}}]
    assert devices["interfaces"] == [
        {"name": "net-0", "model": "virtio", "macAddress": "52:54:00:12:34:56", "masquerade": {}},
        {"name": "net-1", "model": "virtio", "bridge": {}}]
    assert devices["rng"] == {} and devices["autoattachMemBalloon"] is True
    assert "useVirtioTransitional" not in devices
    assert vmi_spec(doc)["networks"] == [{"name": "net-0", "pod": {}},
                                         {"name": "net-1", "multus": {"networkName": "lan"}}]
    assert vmi_spec(doc)["volumes"] == [
        {"name": "disk-0", "hostDisk": {"path": "/var/tmp/out/guest-sda", "type": "Disk"}},
        {"name": "disk-1", "hostDisk": {"path": "/var/tmp/out/guest-sdb", "type": "Disk"}}]


def test_uefi_scsi_topology_and_pvc_prefix():
    target = make_target(bus=pb.BLOCK_BUS_VIRTIO_SCSI, firmware=pb.FIRMWARE_UEFI, ndisks=2,
                         cpu_topology=pb.CpuTopology(sockets=2, cores=4, threads=2))
    doc = describe(target, kubevirt_spec(pvc_prefix="imported-"))
    dom = domain(doc)
    # KubeVirt's EFI means Secure Boot unless told otherwise, which the conversion did not ask for.
    assert dom["firmware"] == {"bootloader": {"efi": {"secureBoot": False}}}
    assert "smm" not in dom["features"]
    target.caps.secure_boot = True
    secure = domain(describe(target, kubevirt_spec()))
    assert secure["firmware"] == {"bootloader": {"efi": {"secureBoot": True}}}
    assert secure["features"]["smm"] == {"enabled": True}
    assert dom["cpu"] == {"cores": 4, "sockets": 2, "threads": 2}
    assert [d["disk"]["bus"] for d in dom["devices"]["disks"]] == ["scsi", "scsi"]
    assert vmi_spec(doc)["volumes"] == [
        {"name": "disk-0", "persistentVolumeClaim": {"claimName": "imported-guest-sda"}},
        {"name": "disk-1", "persistentVolumeClaim": {"claimName": "imported-guest-sdb"}}]


def test_ide_e1000_localtime_on_pc_with_data_volumes():
    target = make_target(bus=pb.BLOCK_BUS_IDE, machine=pb.MACHINE_I440FX, net_bus=pb.NET_BUS_E1000, ndisks=2)
    target.caps.rtc_utc = target.caps.virtio_rng = target.caps.virtio_balloon = target.caps.virtio_1_0 = False
    doc = describe(target, kubevirt_spec(disk_claims=["win-system", "win-data"], data_volumes=True))
    dom = domain(doc)
    assert [d["disk"]["bus"] for d in dom["devices"]["disks"]] == ["sata", "sata"]  # KubeVirt has no IDE
    assert dom["devices"]["interfaces"][0]["model"] == "e1000"
    assert dom["clock"] == {"timezone": "UTC"}
    assert "machine" not in dom  # the cluster's default: KubeVirt does not offer "pc"
    devices = dom["devices"]
    assert "rng" not in devices and devices["autoattachMemBalloon"] is False
    assert devices["useVirtioTransitional"] is True
    assert vmi_spec(doc)["volumes"] == [{"name": "disk-0", "dataVolume": {"name": "win-system"}},
                                        {"name": "disk-1", "dataVolume": {"name": "win-data"}}]


def test_windows_server_2022_bios_virtio():
    doc = describe(server2022_bios())
    dom = domain(doc)
    assert dom["features"] == {"acpi": {}, "apic": {}, "hyperv": WINDOWS_HYPERV}
    # Local time, its zone unknown to every phase: UTC until the user names it (docs/outputs.md).
    assert dom["clock"] == {"timezone": "UTC", "timer": WINDOWS_TIMERS}
    assert dom["firmware"] == {"bootloader": {"bios": {}}}
    assert dom["machine"] == {"type": "q35"}
    assert dom["devices"]["disks"][0]["disk"] == {"bus": "virtio"}
    assert dom["devices"]["interfaces"][0]["model"] == "virtio"
    assert doc["metadata"]["annotations"]["v2v.dev/osinfo"] == "win2k22"


def test_windows_11_uefi_secure_boot():
    dom = domain(describe(win11_uefi_secure_boot()))
    assert dom["firmware"] == {"bootloader": {"efi": {"secureBoot": True}}}
    assert dom["features"]["smm"] == {"enabled": True} and dom["features"]["hyperv"] == WINDOWS_HYPERV


def test_windows_emulated_devices():
    for target in (xp_emulated(), server2022_emulated_q35()):
        doc = describe(target)
        dom = domain(doc)
        assert [d["disk"]["bus"] for d in dom["devices"]["disks"]] == ["sata", "sata"]
        assert dom["devices"]["interfaces"][0]["model"] == "rtl8139"
        assert "rng" not in dom["devices"] and dom["devices"]["autoattachMemBalloon"] is False
        assert dom["clock"]["timer"] == WINDOWS_TIMERS
    assert doc["metadata"]["annotations"]["v2v.dev/osinfo"] == "win2k22"
    assert describe(win7_32bit())["metadata"]["annotations"]["v2v.dev/osinfo"] == "win7"


def test_utc_windows_keeps_utc_with_its_timers():
    target = server2022_bios()
    target.caps.rtc_utc = True  # RealTimeIsUniversal=1
    assert domain(describe(target))["clock"] == {"utc": {}, "timer": WINDOWS_TIMERS}


def test_linux_has_no_windows_preset():
    doc = describe(make_target())
    assert "hyperv" not in domain(doc)["features"] and "timer" not in domain(doc)["clock"]
    assert "v2v.dev/osinfo" not in doc["metadata"]["annotations"]


def test_disk_claims_as_persistent_volume_claims():
    doc = describe(make_target(ndisks=2), kubevirt_spec(disk_claims=["a", "b.c"]))
    assert [v["persistentVolumeClaim"]["claimName"] for v in vmi_spec(doc)["volumes"]] == ["a", "b.c"]


def test_data_volumes_alone_are_named_after_the_vm():
    doc = describe(make_target(name="Web Server", ndisks=2), kubevirt_spec(data_volumes=True))
    assert [v["dataVolume"]["name"] for v in vmi_spec(doc)["volumes"]] == ["web-server-sda", "web-server-sdb"]


def test_second_default_nic_and_bridges_go_to_multus():
    target = make_target(nics=[pb.Nic(network="br0", network_type=pb.NETWORK_TYPE_BRIDGE),
                               pb.Nic(network="default", network_type=pb.NETWORK_TYPE_NETWORK),
                               pb.Nic(network="", network_type=pb.NETWORK_TYPE_NETWORK)])
    doc = describe(target)
    assert vmi_spec(doc)["networks"] == [{"name": f"net-{i}", "multus": {"networkName": n}}
                                         for i, n in enumerate(["br0", "default", "default"])]
    assert all("bridge" in i for i in domain(doc)["devices"]["interfaces"])


def test_no_nics_means_no_pod_interface():
    doc = describe(make_target(nics=[]))
    assert "networks" not in vmi_spec(doc) and "interfaces" not in domain(doc)["devices"]
    assert domain(doc)["devices"]["autoattachPodInterface"] is False


def test_target_nics_replace_the_sources():
    target = make_target()
    target.nics.append(pb.Nic(network="default", network_type=pb.NETWORK_TYPE_NETWORK, mac="52:54:00:aa:bb:cc"))
    target.nics.append(pb.Nic(network="storage", network_type=pb.NETWORK_TYPE_NETWORK))
    interfaces = domain(describe(target))["devices"]["interfaces"]
    assert [i.get("macAddress") for i in interfaces] == ["52:54:00:aa:bb:cc", None]


def test_memory_rounds_up_to_mib():
    target = make_target()
    target.source.memory = 1536 * MiB + 1
    assert domain(describe(target))["memory"] == {"guest": "1537Mi"}


@pytest.mark.parametrize(("name", "expected"), [
    ("guest", "guest"),
    ("My Guest_01", "my-guest-01"),
    ("--Win2019 (SQL)--", "win2019-sql"),
    ("caf\u00e9.example.com", "caf-example-com"),
    ("a" * 70, "a" * 63),
    ("a" * 62 + "_b", "a" * 62),  # no "-" left at the cut
])
def test_dns_name(name, expected):
    assert dns_name(name) == expected
    doc = describe(make_target(name=name))
    assert doc["metadata"]["name"] == expected
    assert doc["metadata"]["annotations"][ANNOTATION_NAME] == name


def test_yaml_keeps_strings_strings():
    # A MAC of digits only reads as a sexagesimal integer to YAML 1.1 parsers unless it is quoted.
    target = make_target(name="on", nics=[pb.Nic(mac="52:54:00:12:34:56", network="default")])
    text = plugin().descriptions(kubevirt_spec(), target, Path("/var/tmp/out"))["on.yaml"]
    doc = yaml.safe_load(text)
    assert doc["metadata"]["annotations"][ANNOTATION_NAME] == "on"
    assert domain(doc)["devices"]["interfaces"][0]["macAddress"] == "52:54:00:12:34:56"


@pytest.mark.parametrize(("options", "ndisks", "message"), [
    ({"disk_claims": ["only-one"]}, 2, "1 -oo disk= given for 2 disks"),
    ({"disk_claims": ["a", "b", "c"]}, 2, "3 -oo disk= given for 2 disks"),
    ({"disk_claims": ["a"], "pvc_prefix": "p-"}, 1, "not both"),
    ({"disk_claims": ["Upper"]}, 1, "not a valid claim name"),
    ({"disk_claims": ["same", "same"]}, 2, "cannot share"),
    ({"pvc_prefix": "Bad_"}, 1, "not a valid claim name"),
])
def test_bad_claim_options(tmp_path, options, ndisks, message):
    target = make_target(ndisks=ndisks)
    spec = kubevirt_spec(tmp_path, **options)
    for call in (lambda: plugin().check(spec, target),
                 lambda: plugin().descriptions(spec, target, tmp_path)):
        with pytest.raises(V2VError) as exc:
            call()
        assert exc.value.code == pb.ERROR_CODE_BAD_INPUT
        assert message in exc.value.message


def test_name_without_letters_is_refused(tmp_path):
    with pytest.raises(V2VError) as exc:
        plugin().check(kubevirt_spec(tmp_path), make_target(name="___"))
    assert exc.value.code == pb.ERROR_CODE_BAD_INPUT and "-on" in exc.value.message


def test_qcow2_only_into_claims(tmp_path):
    with pytest.raises(V2VError) as exc:
        plugin().check(kubevirt_spec(tmp_path, fmt="qcow2"), make_target())
    assert exc.value.code == pb.ERROR_CODE_BAD_INPUT and "raw" in exc.value.message
    plugin().check(kubevirt_spec(tmp_path, fmt="qcow2", pvc_prefix="p-"), make_target())


# ---------------------------------------------------------------- the schema rejects what KubeVirt would

def good_document() -> dict:
    return describe(make_target(ndisks=2, nics=[pb.Nic(network="default"), pb.Nic(network="lan")]))


def break_clock_under_resources(doc: dict) -> None:
    dom = domain(doc)
    dom["resources"] = {"requests": {"memory": "2048Mi"}, "clock": dom.pop("clock")}


def break_features_under_resources(doc: dict) -> None:
    dom = domain(doc)
    dom["resources"] = {"features": dom.pop("features")}


def break_bus(doc: dict) -> None:
    domain(doc)["devices"]["disks"][0]["disk"]["bus"] = "ide"


def break_two_sources(doc: dict) -> None:
    vmi_spec(doc)["volumes"][0]["persistentVolumeClaim"] = {"claimName": "guest-sda"}


def break_thread_typo(doc: dict) -> None:
    domain(doc)["cpu"] = {"sockets": 1, "cores": 2, "thread": 1}  # what virt-v2v wrote


def break_two_bindings(doc: dict) -> None:
    domain(doc)["devices"]["interfaces"][0]["bridge"] = {}


def break_network_without_kind(doc: dict) -> None:
    vmi_spec(doc)["networks"][1] = {"name": "net-1", "networkName": "lan"}  # what virt-v2v wrote


def break_both_clock_offsets(doc: dict) -> None:
    domain(doc)["clock"]["timezone"] = "UTC"


def break_name(doc: dict) -> None:
    doc["metadata"]["name"] = "My_Guest"


def break_running_and_strategy(doc: dict) -> None:
    doc["spec"]["running"] = False


def break_unknown_domain_field(doc: dict) -> None:
    domain(doc)["clocks"] = {"utc": {}}


def break_host_disk_type(doc: dict) -> None:
    vmi_spec(doc)["volumes"][0]["hostDisk"]["type"] = "File"


def break_libvirt_stimer(doc: dict) -> None:
    domain(doc)["features"]["hyperv"] = {"stimer": {}}  # libvirt's name, not KubeVirt's synictimer


def break_spinlock_retries(doc: dict) -> None:
    domain(doc)["features"]["hyperv"] = {"spinlocks": {"retries": 8191}}


def break_timer_tick_policy(doc: dict) -> None:
    domain(doc)["clock"]["timer"] = {"pit": {"tickpolicy": "delay"}}  # libvirt's spelling


@pytest.mark.parametrize("breaker", [
    break_libvirt_stimer, break_spinlock_retries, break_timer_tick_policy,
    break_clock_under_resources, break_features_under_resources, break_bus, break_two_sources,
    break_thread_typo, break_two_bindings, break_network_without_kind, break_both_clock_offsets, break_name,
    break_running_and_strategy, break_unknown_domain_field, break_host_disk_type,
], ids=lambda f: f.__name__.removeprefix("break_"))
def test_schema_rejects(breaker):
    doc = copy.deepcopy(good_document())
    breaker(doc)
    assert list(VALIDATOR.iter_errors(doc)), f"{breaker.__name__}: the schema accepted it"


def test_schema_rejects_hand_made_clock_under_resources():
    doc = yaml.safe_load("""
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: guest
spec:
  template:
    spec:
      domain:
        resources:
          requests:
            memory: 2048Mi
          clock:
            utc: {}
        devices: {}
""")
    errors = list(VALIDATOR.iter_errors(doc))
    assert any(list(e.absolute_path)[-2:] == ["domain", "resources"] and "clock" in e.message for e in errors)
    del doc["spec"]["template"]["spec"]["domain"]["resources"]["clock"]
    valid(doc)


# ---------------------------------------------------------------- through the output service



def test_service_setup_and_finalize(service, workdir, tmp_path):
    source = pb.Source(name="Guest One", hypervisor=pb.HYPERVISOR_VMWARE, memory=1024 * MiB, vcpus=1,
                       disks=[pb.SourceDisk(index=i, virtual_size=MiB) for i in range(2)],
                       nics=[pb.Nic(network="default", network_type=pb.NETWORK_TYPE_NETWORK)])
    target = pb.TargetMeta(source=source, caps=pb.GuestCaps(block_bus=pb.BLOCK_BUS_VIRTIO_SCSI,
                                                            machine=pb.MACHINE_Q35, arch="x86_64"))
    output = kubevirt_spec(tmp_path)
    service.check(output_pb2.CheckRequest(guest="guest", output=output, source=source))
    resp = service.setup(output_pb2.SetupRequest(workdir=workdir.name, guest="guest", output=output,
                                                 target=target))
    assert resp.target_is_zero and len(resp.sockets) == 2
    files = service.finalize(output_pb2.FinalizeRequest(workdir=workdir.name, guest="guest",
                                                        output=output)).files
    assert list(files) == [str(tmp_path / "Guest One-sda"), str(tmp_path / "Guest One-sdb"),
                           str(tmp_path / "Guest One.yaml")]
    doc = valid(yaml.safe_load(Path(files[2]).read_text()))
    assert doc["metadata"]["name"] == "guest-one"
    assert [v["hostDisk"]["path"] for v in vmi_spec(doc)["volumes"]] == list(files[:2])
    assert [d["disk"]["bus"] for d in domain(doc)["devices"]["disks"]] == ["scsi", "scsi"]

    # The YAML is part of the target: a second run must not overwrite it.
    for disk in files[:2]:
        Path(disk).unlink()
    with pytest.raises(V2VError) as exc:
        service.check(output_pb2.CheckRequest(guest="guest", output=output, source=source))
    assert exc.value.code == pb.ERROR_CODE_TARGET_EXISTS and "Guest One.yaml" in exc.value.message


def test_service_check_refuses_claim_count(service, tmp_path):
    source = pb.Source(name="guest", disks=[pb.SourceDisk(index=0, virtual_size=MiB)])
    with pytest.raises(V2VError) as exc:
        service.check(output_pb2.CheckRequest(guest="guest", output=kubevirt_spec(tmp_path, disk_claims=["a", "b"]),
                                              source=source))
    assert exc.value.code == pb.ERROR_CODE_BAD_INPUT and exc.value.step == "check"
