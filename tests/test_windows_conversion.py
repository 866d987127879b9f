"""Windows conversion end to end on the phony Windows guests (tests/guests/windows): each good guest
is converted once by the CLI (-i libvirtxml, so its NICs have MACs; -o local), then all converted
disks are read back in one appliance, and the tests assert the exact registry values (hivex), files,
first-boot scripts and domain XML. The bad guests fail with one line naming the guest and the step,
and nothing of theirs is written. No Windows boots here: what a phony cannot prove is said in
docs/conversion.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import guestfs
import hivex
import pytest

from tests.conftest import V2V, Run, sha256
from tests.guests.windows.build import Built

pytestmark = pytest.mark.appliance

# The source NICs of each guest's domain XML: win2k22's first carries the MAC its adapter's
# NetworkAddress names, its second is tied by the connection name Ethernet1, its third is DHCP.
NICS = {
    "win2k22": ["00:50:56:a1:b2:c3", "00:50:56:a1:b2:c4", "00:50:56:a1:b2:c5"],
    "win11": ["00:50:56:b1:00:01"],
    "win7-32": ["00:50:56:c1:00:01"],
    "winxp-32": [],
}


def domain_xml(name: str, image: Path, macs: list[str], uefi: bool = False) -> str:
    nics = "".join(f'<interface type="network"><mac address="{m}"/><source network="default"/>'
                   '<model type="vmxnet3"/></interface>' for m in macs)
    os_ = '<os firmware="efi"><type arch="x86_64">hvm</type></os>' if uefi else ""
    return (f'<domain type="vmware"><name>{name}</name><memory unit="MiB">2048</memory><vcpu>2</vcpu>{os_}'
            f'<devices><disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="{image}"/>'
            f'<target dev="sda" bus="scsi"/></disk>{nics}</devices></domain>')


@dataclass
class Conversion:
    rc: int
    stderr: str
    out: Path
    source_sha: str
    source_sha_after: str = ""
    system: dict[str, dict[str, tuple[int, bytes]]] = field(default_factory=dict)
    software: dict[str, dict[str, tuple[int, bytes]]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # guest path -> content (small files)
    listing: list[str] = field(default_factory=list)  # every path on C:, lower case
    esp: dict[str, bytes] = field(default_factory=dict)
    bcd: dict[str, dict[str, tuple[int, bytes]]] = field(default_factory=dict)

    @property
    def xml(self) -> ET.Element:
        return ET.parse(next(self.out.glob("*.xml"))).getroot()


def dump(path: Path) -> dict[str, dict[str, tuple[int, bytes]]]:
    """Every key of a hive (lower-cased backslash path) -> its values (lower-cased name -> type, data)."""
    h = hivex.Hivex(str(path))
    keys: dict[str, dict[str, tuple[int, bytes]]] = {}

    def walk(node: int, path: str) -> None:
        keys[path.lower()] = {h.value_key(v).lower(): h.value_value(v) for v in h.node_values(node)}
        for child in h.node_children(node):
            walk(child, f"{path}\\{h.node_name(child)}" if path else h.node_name(child))

    walk(h.root(), "")
    return keys


def text(raw: bytes) -> str:
    return raw.decode("utf-16-le").rstrip("\0")


def dword(val: tuple[int, bytes]) -> int:
    return int(struct.unpack("<I", val[1])[0])


def run_v2v(v2v, name: str, image: Path, out: Path, *extra: str, uefi: bool = False) -> tuple[int, str]:  # noqa: ANN001
    xml = out.parent / f"{name}.xml"
    xml.write_text(domain_xml(name, image, NICS.get(name, []), uefi))
    out.mkdir(parents=True)
    r = v2v("-i", "libvirtxml", str(xml), "-o", "local", "-os", str(out), *extra, timeout=1200)
    return r.rc, r.stderr


@pytest.fixture(scope="module")
def converted(windows_build: Built, tmp_path_factory: pytest.TempPathFactory, workroot_module: Path,
              v2v_module) -> Iterator[dict[str, Conversion]]:  # noqa: ANN001
    """Each good guest converted once: the ISO image for win11 (read through the appliance), the
    directory tree for the others; winxp-32 with an empty tools directory (it needs no first boot)."""
    top = tmp_path_factory.mktemp("windows")
    empty_tools = top / "no-tools"
    empty_tools.mkdir()
    runs = {}
    w = windows_build
    for name, drivers, tools in (("win2k22", w.virtio_win, w.virt_tools), ("win11", w.virtio_win_iso, w.virt_tools),
                                 ("win7-32", w.virtio_win, w.virt_tools), ("winxp-32", w.virtio_win, empty_tools)):
        image = w.guests[name]
        before = sha256(image)
        rc, err = run_v2v(v2v_module, name, image, top / name, "--virtio-win", str(drivers), "--virt-tools-dir",
                          str(tools), uefi=name == "win11")
        runs[name] = Conversion(rc, err, top / name, before, sha256(image))
    read_back(runs)
    yield runs


def read_back(runs: dict[str, Conversion]) -> None:
    """All converted disks in one read-only appliance: C: is partition 2 of every phony guest."""
    ok = {n: c for n, c in runs.items() if c.rc == 0}
    g = guestfs.GuestFS(python_return_dict=True)
    for c in ok.values():
        g.add_drive_opts(str(next(c.out.glob("*-sda"))), readonly=True, format="raw")
    g.launch()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for dev, (name, c) in zip(g.list_devices(), ok.items(), strict=True):
                g.mount_ro(f"{dev}2", "/")
                for hive, attr in (("SYSTEM", "system"), ("SOFTWARE", "software")):
                    local = Path(tmp) / f"{name}-{hive}"
                    g.download(f"/Windows/System32/config/{hive}", str(local))
                    setattr(c, attr, dump(local))
                c.listing = sorted(p.lower().lstrip("/") for p in g.find("/"))
                for path in g.find("/Program Files/Guestfs/Firstboot") if g.is_dir("/Program Files/Guestfs") else []:
                    full = f"/Program Files/Guestfs/Firstboot/{path.lstrip('/')}"
                    if g.is_file(full):
                        c.files[full] = g.read_file(full)
                g.umount_all()
                if name == "win11":
                    g.mount_ro(f"{dev}1", "/")
                    c.esp = {p.lstrip("/"): g.read_file(f"/{p.lstrip('/')}") for p in g.find("/")
                             if g.is_file(f"/{p.lstrip('/')}")}
                    local = Path(tmp) / "BCD"
                    g.download("/EFI/Microsoft/Boot/BCD", str(local))
                    c.bcd = dump(local)
                    g.umount_all()
    finally:
        g.close()


@pytest.fixture(scope="module")
def workroot_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("workroot")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def v2v_module(workroot_module: Path):  # noqa: ANN201
    def run(*args: str, timeout: float = 900) -> Run:
        env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot_module), COLUMNS="120")
        p = subprocess.run([str(V2V), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
        return Run(p.returncode, p.stdout, p.stderr)

    return run


CCS = "controlset001"


def test_every_good_guest_converts_and_its_source_is_untouched(converted: dict[str, Conversion]) -> None:
    for name, c in converted.items():
        assert c.rc == 0, f"{name}: {c.stderr}"
        assert c.source_sha_after == c.source_sha, name


def test_2022_boot_driver_through_the_driver_database_with_the_fixed_label(converted: dict[str, Conversion]) -> None:
    s = converted["win2k22"].system
    svc = s[f"{CCS}\\services\\viostor"]
    assert (dword(svc["type"]), dword(svc["start"]), dword(svc["errorcontrol"])) == (1, 0, 1)
    assert text(svc["group"][1]) == "SCSI miniport" and svc["imagepath"][0] == 2  # REG_EXPAND_SZ
    assert text(svc["imagepath"][1]) == "system32\\drivers\\viostor.sys"
    label = "guestor.inf_amd64_0000000000000000"
    assert text(s["driverdatabase\\driverinffiles\\guestor.inf"]["active"][1]) == label
    pkg = s[f"driverdatabase\\driverpackages\\{label}"]
    assert len(pkg["version"][1]) == 48 and pkg["version"][1][8:24] == bytes.fromhex("7be9364d25e3ce11bfc108002be10318")
    assert text(s[f"driverdatabase\\driverpackages\\{label}\\configurations\\guestor_conf"]["service"][1]) == "viostor"
    for pci in ("ven_1af4&dev_1001&rev_00", "ven_1af4&dev_1042&rev_01"):
        assert s[f"driverdatabase\\deviceids\\pci\\{pci}"]["guestor.inf"][1] == bytes.fromhex("01ff0000")
    assert not [k for k in s if "guestor.inf_tmp" in k]  # virt-v2v 2.2's label breaks pnputil
    assert not [k for k in s if "criticaldevicedatabase" in k]


def test_2022_old_drivers_disabled_and_crash_screen_kept(converted: dict[str, Conversion]) -> None:
    s = converted["win2k22"].system
    assert dword(s[f"{CCS}\\services\\prl_fs"]["start"]) == 4
    assert dword(s[f"{CCS}\\services\\rhelscsi"]["start"]) == 4
    assert dword(s[f"{CCS}\\services\\prl_strg"]["start"]) == 4  # the key stays: its uninstaller needs it
    filters = s[f"{CCS}\\control\\class\\{{4d36e967-e325-11ce-bfc1-08002be10318}}"]["lowerfilters"]
    assert filters == (7, "EhStorClass".encode("utf-16-le") + b"\0\0\0\0")
    assert dword(s[f"{CCS}\\control\\crashcontrol"]["autoreboot"]) == 0


def test_2022_software_hive_device_path(converted: dict[str, Conversion]) -> None:
    val = converted["win2k22"].software["microsoft\\windows\\currentversion"]["devicepath"]
    assert val[0] == 2 and text(val[1]) == "%SystemRoot%\\inf;%SystemRoot%\\Drivers\\VirtIO"


def test_2022_driver_files(converted: dict[str, Conversion]) -> None:
    c = converted["win2k22"]
    virtio = sorted(p.rsplit("/", 1)[1] for p in c.listing if p.startswith("windows/drivers/virtio/"))
    assert "viostor.sys" in virtio and "netkvm.inf" in virtio and "vioscsi.inf" in virtio
    assert not [f for f in virtio if f.endswith(".pdb") or f.startswith(("vioprot", "qemufwcfg"))]
    assert "windows/system32/drivers/viostor.sys" in c.listing


def test_2022_firstboot_service_and_scripts_in_order(converted: dict[str, Conversion]) -> None:
    c = converted["win2k22"]
    fb = c.system[f"{CCS}\\services\\firstboot"]
    assert text(fb["imagepath"][1]) == r"C:\Program Files\Guestfs\Firstboot\rhsrvany.exe -s firstboot"
    assert (dword(fb["type"]), dword(fb["start"])) == (0x10, 2)
    params = c.system[f"{CCS}\\services\\firstboot\\parameters"]
    assert text(params["commandline"][1]) == r'cmd /c "C:\Program Files\Guestfs\Firstboot\firstboot.bat"'
    top = "/Program Files/Guestfs/Firstboot"
    assert c.files[f"{top}/rhsrvany.exe"].startswith(b"fake rhsrvany")
    assert b"\r\n" in c.files[f"{top}/firstboot.bat"]
    scripts = sorted(p.rsplit("/", 1)[1] for p in c.files if p.startswith(f"{top}/scripts/"))
    assert scripts == ["2000-0002-pnputil-install-drivers.bat", "2500-0001-network-configure.bat",
                       "5000-0003-install-qemu-ga.bat", "5000-0004-install-blnsvr.bat",
                       "5000-0005-uninstall-Xen-PV.bat", "5000-0006-uninstall-VMware-Tools.bat",
                       "5000-0007-uninstall-Parallels-tools.bat"]  # the Uninstall keys in the hive's order
    vmware = c.files[f"{top}/scripts/5000-0006-uninstall-VMware-Tools.bat"].decode()
    assert "MsiExec.exe /x{" in vmware and "/I{" not in vmware and "REMOVE=ALL" in vmware
    xen = c.files[f"{top}/scripts/5000-0005-uninstall-Xen-PV.bat"]
    assert b'_uninst.exe"' in xen and b"\0" not in xen  # 2.2 keeps the REG_SZ's NUL and misses the rename
    assert f"{top}/Temp/qemu-ga-x86_64.msi" in c.files


def test_2022_static_ips_kept_for_the_right_nics(converted: dict[str, Conversion]) -> None:
    c = converted["win2k22"]
    ps1 = c.files["/Program Files/Guestfs/Firstboot/Temp/network-configure.ps1"].decode()
    first, second = ps1.split("$mac = ")[1:3]
    assert first.startswith("'00-50-56-A1-B2-C3'")  # tied by its NetworkAddress
    assert "-IPAddress '192.168.122.10' -PrefixLength 24 -DefaultGateway '192.168.122.1'" in first
    assert "-ServerAddresses ('192.168.122.1', '8.8.8.8')" in first
    assert second.startswith("'00-50-56-A1-B2-C4'")  # tied by its connection name Ethernet1
    assert "-IPAddress '10.0.0.20' -PrefixLength 16 -DefaultGateway '10.0.0.1'" in second
    assert "00-50-56-A1-B2-C5" not in ps1  # DHCP


def test_2022_domain_xml(converted: dict[str, Conversion]) -> None:
    xml = converted["win2k22"].xml
    assert xml.find("devices/disk/target").get("bus") == "virtio"
    assert xml.find("devices/interface/model").get("type") == "virtio"
    assert [m.get("address") for m in xml.findall("devices/interface/mac")] == NICS["win2k22"]
    assert xml.find("clock").get("offset") == "localtime"  # no RealTimeIsUniversal: Windows' default


def test_11_uefi_esp_and_bcd_fixed_from_the_iso(converted: dict[str, Conversion]) -> None:
    c = converted["win11"]
    assert c.esp["EFI/Boot/bootx64.efi"] == c.esp["EFI/Microsoft/Boot/bootmgfw.efi"]
    default = text(c.bcd["objects\\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\\elements\\23000003"]["element"][1])
    assert f"objects\\{default.lower()}\\elements" in c.bcd
    assert f"objects\\{default.lower()}\\elements\\16000046" not in c.bcd
    assert "windows/system32/drivers/viostor.sys" in c.listing
    assert c.xml.find("clock").get("offset") == "utc"  # RealTimeIsUniversal=1
    assert "efi" in ET.tostring(c.xml.find("os")).decode()


def test_7_boot_driver_through_the_critical_device_database(converted: dict[str, Conversion]) -> None:
    s = converted["win7-32"].system
    for pci in ("ven_1af4&dev_1001&rev_00", "ven_1af4&dev_1042&rev_01"):
        cdd = s[f"{CCS}\\control\\criticaldevicedatabase\\pci#{pci}"]
        assert text(cdd["service"][1]) == "viostor"
        assert text(cdd["classguid"][1]) == "{4D36E97B-E325-11CE-BFC1-08002BE10318}"
    assert not [k for k in s if k.startswith("driverdatabase\\driverpackages")]
    assert "/Program Files/Guestfs/Firstboot/Temp/qemu-ga-i386.msi" in converted["win7-32"].files


def test_xp_without_drivers_falls_back_to_emulated_devices_without_first_boot(
        converted: dict[str, Conversion]) -> None:
    c = converted["winxp-32"]
    assert "no virtio drivers for this version of Windows" in c.stderr
    assert not [p for p in c.listing if p.startswith("windows/drivers/virtio")]
    assert not [p for p in c.listing if p.startswith("program files/guestfs")]
    assert f"{CCS}\\services\\firstboot" not in c.system
    xml = c.xml
    assert xml.find("devices/disk/target").get("bus") in ("ide", "sata")
    assert xml.find("devices/interface") is None or xml.find("devices/interface/model").get("type") == "rtl8139"


@pytest.mark.parametrize(("name", "expected"), [
    ("win2k22-hibernated", "hibernated"),
    ("win2k22-bitlocker", "BitLocker"),
    ("win2k22-truncated-hive", "hive"),
])
def test_bad_guests_fail_with_one_line_and_nothing_written(windows_build: Built, tmp_path: Path, v2v, name: str,  # noqa: ANN001
                                                           expected: str) -> None:
    image = windows_build.guests[name]
    before = sha256(image)
    rc, err = run_v2v(v2v, name, image, tmp_path / "out", "--virtio-win", str(windows_build.virtio_win),
                      "--virt-tools-dir", str(windows_build.virt_tools))
    assert rc != 0
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and name in errors[0] and expected in errors[0], err
    assert sha256(image) == before
    assert not list((tmp_path / "out").iterdir())


def test_no_firstboot_service_refused_before_anything_is_written(windows_build: Built, tmp_path: Path, v2v) -> None:  # noqa: ANN001
    image = windows_build.guests["win2k22"]
    empty = tmp_path / "tools"
    empty.mkdir()
    rc, err = run_v2v(v2v, "win2k22", image, tmp_path / "out", "--virtio-win", str(windows_build.virtio_win),
                      "--virt-tools-dir", str(empty))
    assert rc != 0 and "rhsrvany.exe" in err and str(empty) in err, err
    assert not list((tmp_path / "out").iterdir())


def test_system_disk_that_is_a_dynamic_disk_is_refused(windows_build: Built, tmp_path: Path, v2v) -> None:  # noqa: ANN001
    """C: on an LDM partition (MBR type 0x42): virt-v2v does not support it (RHBZ#2140548), nor do we,
    and we say so before the first write."""
    image = tmp_path / "dynamic.img"
    shutil.copyfile(windows_build.guests["win2k22"], image)
    table = subprocess.run(["sfdisk", "-d", str(image)], capture_output=True, text=True, check=True).stdout
    ntfs = [m.group(1) for m in re.finditer(r"^\S+?(\d+) : .*type=7\b", table, re.M)]
    assert ntfs, table
    for number in ntfs:
        subprocess.run(["sfdisk", "-q", "--part-type", str(image), number, "42"], check=True)
    before = sha256(image)
    rc, err = run_v2v(v2v, "win2k22", image, tmp_path / "out", "--virtio-win", str(windows_build.virtio_win),
                      "--virt-tools-dir", str(windows_build.virt_tools))
    assert rc != 0 and "dynamic disk" in err and "basic disk" in err, err
    assert sha256(image) == before
    assert not list((tmp_path / "out").iterdir())


def test_inspect_shows_what_windows_is(windows_build: Built, v2v) -> None:  # noqa: ANN001
    """`v2v inspect` on a Windows guest: WindowsInfo and the applications, by upstream's current osinfo
    rules (Debian's libguestfs says win10 for this Windows 11)."""
    image = windows_build.guests["win11"]
    before = sha256(image)
    r = v2v("inspect", "-i", "disk", str(image), "-O", "-")
    assert r.rc == 0, r.stderr
    insp = json.loads(r.stdout)["inspection"]
    assert insp["type"] == "windows" and insp["arch"] == "x86_64"
    win = insp["windows"]
    assert (win["osinfo"], win["product_variant"], win["build"]) == ("win11", "Client", "22631")
    assert win["current_control_set"] == "ControlSet001" and win["drive_mappings"]["C"] == "/dev/sda2"
    assert sha256(image) == before


def test_in_place_converts_a_windows_disk_where_it_is(windows_build: Built, v2v, tmp_path: Path) -> None:  # noqa: ANN001
    """`v2v --in-place` on a copy of the 2022 guest: the same conversion, written to the disk itself."""
    disk = tmp_path / "win2k22.img"
    subprocess.run(["cp", "--sparse=always", str(windows_build.guests["win2k22"]), str(disk)], check=True)
    r = v2v("--in-place", "-i", "disk", str(disk), "--virtio-win", str(windows_build.virtio_win),
            "--virt-tools-dir", str(windows_build.virt_tools), "-O", str(tmp_path / "report.json"))
    assert r.rc == 0, r.stderr
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(disk), readonly=True, format="raw")
    g.launch()
    try:
        g.mount_ro("/dev/sda2", "/")
        assert g.is_file("/Windows/System32/drivers/viostor.sys")
        assert g.is_file("/Program Files/Guestfs/Firstboot/firstboot.bat")
    finally:
        g.close()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["inspection"]["windows"]["osinfo"] == "win2k22" and report["caps"]["hyperv"]
