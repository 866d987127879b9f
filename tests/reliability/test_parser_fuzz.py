"""Parser fuzzing (docs/reliability.md): hypothesis feeds every parser of untrusted input, OVF, VMX,
VMDK descriptors, libvirt domain XML, fleet plans and OVA tars, with inputs that are mostly the
right shape and wrong in one place (a valid document with slices replaced by random text, values
from the edges: negative, huge, NUL, newlines, ``..``) and with plain random bytes. Every input must
end in a clean refusal (the parser's own error: a V2VError with a one-line message, or VmxError,
which the VMX input names the file with) or in a valid result; any other exception is a crash.

Deterministic in CI (derandomize: the same examples every run, no database); more examples, found
anew, with V2V_FUZZ_EXAMPLES=N V2V_FUZZ_RANDOM=1."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ova_fixtures import Disk, Spec, ovf
from v2v.cli.plan import parse_plan
from v2v.errors import V2VError
from v2v.services.input.domainxml import parse_domain
from v2v.services.input.ova import find_ovf, open_package, parse_vmdk_descriptor, verify_manifests
from v2v.services.input.ovf import parse_ovf
from v2v.services.input.vmxfile import VmxError, parse_descriptor, parse_vmx

EXAMPLES = int(os.environ.get("V2V_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("V2V_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Values from the edges, for the places a valid document has a value.
EDGES = st.one_of(
    st.sampled_from(["", "-1", "0", "18446744073709551616", "99999999999999999999999", "1e309", "NaN", "..",
                     "../../etc/passwd", "/etc/passwd", "a\x00b", "a\nb", "\t", "&amp;", "&ent;", "<x/>", "]]>",
                     '"', "'", "\\", "ovf:/disk/", "TRUE", "efi", "bios", "%s%n", "\u202e", "x" * 5000]),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


def mutations(seed: str) -> st.SearchStrategy[str]:
    """`seed` with one to four slices replaced: the shape stays mostly right, one place is wrong."""
    cut = st.tuples(st.integers(0, len(seed)), st.integers(0, 60), EDGES)

    def apply(cuts: list[tuple[int, int, str]]) -> str:
        text = seed
        for at, length, value in sorted(cuts, reverse=True):
            text = text[:at] + value + text[at + length:]
        return text

    return st.lists(cut, min_size=1, max_size=4).map(apply)


def inputs(seed: str) -> st.SearchStrategy[str]:
    return st.one_of(mutations(seed), st.text(max_size=300))


def refused_cleanly(parse: Callable[[], object]) -> None:
    """The parser returns, or refuses with its own error; a V2VError's message is one line."""
    try:
        parse()
    except V2VError as err:
        assert err.message and "\n" not in err.message.strip(), repr(err.message)
    except VmxError as err:
        assert str(err)


OVF_SEED = ovf(Spec(disks=[Disk("disk1.vmdk"), Disk("disk2.vmdk", controller="ide")],
                    nics=[("00:50:56:01:02:03", "VmxNet3", "VM Network"), ("", "E1000", "lab")], floppy=True))
VBOX_SEED = ovf(Spec(disks=[Disk("d.vmdk", controller="sata")], vbox=True, firmware="efi",
                     vbox_macs=["080027000001"]))


@FUZZ
@given(st.one_of(inputs(OVF_SEED), inputs(VBOX_SEED), st.binary(max_size=300)))
def test_ovf(text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    refused_cleanly(lambda: parse_ovf(data, "fuzz.ovf"))


VMX_SEED = """.encoding = "UTF-8"
config.version = "8"
displayName = "web01"
guestOS = "debian11-64"
firmware = "efi"
uefi.secureBoot.enabled = "TRUE"
memsize = "2048"
numvcpus = "4"
cpuid.coresPerSocket = "2"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01.vmdk"
scsi0:0.deviceType = "scsi-hardDisk"
sata0.present = "TRUE"
sata0:1.present = "TRUE"
sata0:1.deviceType = "cdrom-image"
sata0:1.fileName = "/vmfs/volumes/ds1/iso/debian.iso"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "static"
ethernet0.address = "00:50:56:a1:b2:c3"
floppy0.present = "FALSE"
"""


@FUZZ
@given(inputs(VMX_SEED))
def test_vmx(text: str) -> None:
    refused_cleanly(lambda: parse_vmx(text, "fallback"))


DESCRIPTOR_SEED = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfs"
parentFileNameHint="base.vmdk"

# Extent description
RW 8388608 VMFS "web01-flat.vmdk" 0
RDONLY 2048 SPARSE "web01-s001.vmdk"

ddb.adapterType = "lsilogic"
"""


@FUZZ
@given(inputs(DESCRIPTOR_SEED))
def test_vmdk_descriptors(text: str) -> None:
    refused_cleanly(lambda: parse_descriptor(text))
    refused_cleanly(lambda: parse_vmdk_descriptor(text))


DOMAIN_SEED = """<domain type="kvm">
  <name>web01</name>
  <memory unit="GiB">2</memory>
  <vcpu>4</vcpu>
  <cpu><topology sockets="1" cores="2" threads="2"/><model>Skylake</model></cpu>
  <os firmware="efi"><type arch="x86_64">hvm</type><loader secure="yes"/></os>
  <devices>
    <controller type="scsi" index="0" model="virtio-scsi"/>
    <disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="/var/lib/a.qcow2"/>
      <target dev="sda" bus="scsi"/><address type="drive" controller="0" unit="0"/></disk>
    <disk type="network" device="disk"><source protocol="nbd" name="exp"><host name="h" port="10809"/></source>
      <target dev="vdb" bus="virtio"/></disk>
    <disk type="file" device="cdrom"><target dev="hdc" bus="ide"/></disk>
    <interface type="network"><source network="default"/><mac address="52:54:00:01:02:03"/>
      <model type="virtio"/></interface>
    <interface type="bridge"><source bridge="br0"/></interface>
  </devices>
</domain>
"""


@FUZZ
@given(st.one_of(inputs(DOMAIN_SEED), st.binary(max_size=300)))
def test_libvirt_domain_xml(text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    refused_cleanly(lambda: parse_domain(data, "fuzz.xml"))


PLAN_SEED = """defaults:
  output: {type: local, storage: /var/tmp/out, format: qcow2}
  verify_boot: basic
guests:
  - name: web01
    input: {type: disk, files: [/var/tmp/a.img]}
    priority: 5
  - name: db01
    input: {type: vmx, file: /vmfs/db01.vmx}
    output: {name: db01-kvm}
    networks: ["-n default", "--mac 00:50:56:a1:b2:c3:ip:192.0.2.10,192.0.2.1,24"]
"""
YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), EDGES),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(EDGES, inner, max_size=4)),
    max_leaves=12)


@FUZZ
@given(st.one_of(inputs(PLAN_SEED),
                 YAML_VALUES.map(lambda v: yaml.safe_dump(v)),
                 st.dictionaries(st.sampled_from(["defaults", "guests", "workers", "limits"]), YAML_VALUES,
                                 max_size=3).map(lambda v: yaml.safe_dump(v))))
def test_fleet_plans(text: str) -> None:
    refused_cleanly(lambda: parse_plan(text, "fuzz.yaml"))


MEMBER_NAMES = st.one_of(st.sampled_from(["guest.ovf", "guest.mf", "disk1.vmdk", "a/disk1.vmdk", "../disk1.vmdk",
                                          "/etc/passwd", "./guest.ovf", "guest.OVF", "x/../../y", "", "a\nb.ovf"]),
                         st.text(min_size=1, max_size=30))
MEMBER_KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                                tarfile.CHRTYPE, tarfile.FIFOTYPE])
MEMBER_DATA = st.one_of(st.binary(max_size=200), mutations(OVF_SEED).map(str.encode),
                        st.just(b"SHA256(disk1.vmdk)= " + b"0" * 64 + b"\n"), st.just(OVF_SEED.encode()))


@FUZZ
@given(st.lists(st.tuples(MEMBER_NAMES, MEMBER_KINDS, MEMBER_DATA), min_size=1, max_size=5),
       st.integers(0, 2048))
def test_ova_tars(tmp_path: Path, members: list[tuple[str, int, bytes]], cut: int) -> None:
    """Tars with links, devices, FIFOs, odd and duplicate names, manifests and OVFs, some cut short:
    opening the package, finding its OVF, checking its manifest and reading the OVF."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name.replace("\x00", "") or "x")
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "../../etc/passwd" if len(data) % 2 else "guest.ovf"
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    path = tmp_path / "fuzz.ova"
    path.write_bytes(raw[:len(raw) - cut] if cut < len(raw) else raw)

    def read() -> None:
        pkg = open_package(path)
        member = find_ovf(pkg)
        verify_manifests(pkg, member)
        parse_ovf(member.read(), f"{path}: {member.name}")

    refused_cleanly(read)


FOUND = [  # what the fuzzing found, each fixed: now a clean refusal
    (parse_plan, "\x1f"),  # PyYAML's error text spans three lines
    (parse_plan, "defaults:\n- ''\nguests:\n- {}"),  # defaults a list: ValueError
    (parse_plan, "guests:\n- ?"),  # a None key: TypeError joining the unknown keys
    (parse_plan, "guests:\n- ? '\n\n'"),  # a key with newlines: a two-line error
    (lambda text: parse_ovf(text.encode(), "f.ovf"), '<?xml version="1.0" encoding="U-1TF-8"?><Envelope/>'),
    (lambda text: parse_domain(text.encode(), "f.xml"), '<?xml version="1.0" encoding="nope"?><domain/>'),
    (lambda text: parse_vmx(text, "fallback"), 'memsize = "-1"'),  # once protobuf's "Value out of range"
    (lambda text: parse_vmx(text, "fallback"), 'memsize = "99999999999999999999"'),
]


@pytest.mark.parametrize(("parse", "text"), FOUND)
def test_found_by_fuzzing(parse: Callable[[str], object], text: str) -> None:
    refused_cleanly(lambda: parse(text))


def test_an_ova_member_named_with_a_newline_is_refused(tmp_path: Path) -> None:
    """Found by fuzzing: the name reached error messages as two lines."""
    path = tmp_path / "g.ova"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a\nb.ovf")
        info.size = len(OVF_SEED)
        tar.addfile(info, io.BytesIO(OVF_SEED.encode()))
    with pytest.raises(V2VError, match=r"unsafe member name 'a\\nb.ovf' \(control characters\)"):
        open_package(path)
