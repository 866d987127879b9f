"""The phony Windows guests are what the Windows conversion tests need them to be: libguestfs
inspection (Debian's 1.48) sees each as the Windows it stands for, the broken ones break the way
real ones do, and the hives read back with hivex hold the values the conversion acts on. All of it
through one read-only handle (one appliance launch), but for the truncated hive: it makes inspect_os
fail for every disk of its handle, so it gets a handle of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests.windows.build import GUESTS
from tests.guests.windows.virtio_win import RHSRVANY

pytestmark = pytest.mark.appliance

# name -> (osinfo, arch, major, minor, variant)
EXPECTED = {
    "win2k22": ("win2k22", "x86_64", 10, 0, "Server"),
    # Windows 11 is osinfo win10 on Debian's libguestfs 1.48: the build >= 22000 rule came in 1.49.8.
    "win11": ("win10", "x86_64", 10, 0, "Client"),
    "win7-32": ("win7", "i386", 6, 1, "Client"),
    # XP has no InstallationType value, so no variant: not "Client" (driver matching on 5.1 ignores it).
    "winxp-32": ("winxp", "i386", 5, 1, "unknown"),
    # Inspection only reads: a hibernated Windows inspects like any other.
    "win2k22-hibernated": ("win2k22", "x86_64", 10, 0, "Server"),
}
SHARED = [name for name in GUESTS if name != "win2k22-truncated-hive"]
UNINSTALL = "\\Microsoft\\Windows\\CurrentVersion\\Uninstall"
INTERFACES = "\\ControlSet001\\Services\\Tcpip\\Parameters\\Interfaces"


@pytest.fixture(scope="module")
def handle(windows_guests: dict[str, Path], virtio_win_image: Path):
    """One launched read-only handle with every guest but the truncated-hive one, in GUESTS order, then
    the virtio-win image."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    for name in SHARED:
        g.add_drive_opts(str(windows_guests[name]), format="raw", readonly=True)
    g.add_drive_opts(str(virtio_win_image), format="raw", readonly=True)
    g.launch()
    yield g
    g.close()


@pytest.fixture(scope="module")
def devices(handle) -> dict[str, str]:
    return dict(zip([*SHARED, "virtio-win"], handle.list_devices(), strict=True))


@pytest.fixture(scope="module")
def roots(handle, devices: dict[str, str]) -> dict[str, str]:
    """Guest name -> its inspected root."""
    by_device = {root[:-1]: root for root in handle.inspect_os()}
    return {name: by_device[dev] for name, dev in devices.items() if dev in by_device}


def hive(g, tmp_path: Path, device: str, path: str):
    """A hivex handle on a copy of the hive `path` of the filesystem `device`."""
    import hivex

    local = tmp_path / path.rsplit("/", 1)[1]
    g.mount_ro(device, "/")
    try:
        g.download(path, str(local))
    finally:
        g.umount_all()
    return hivex.Hivex(str(local))


def node(h, path: str) -> int:
    n = h.root()
    for part in path.strip("\\").split("\\"):
        n = h.node_get_child(n, part)
        assert n is not None, f"no key {path}"
    return n


def value(h, path: str, key: str):
    v = h.node_get_value(node(h, path), key)
    t = h.value_type(v)[0]
    if t == 7:  # decoded here: python3-hivex 1.3.23 returns the list's terminating empty string too
        return h.value_value(v)[1].decode("utf-16-le").rstrip("\0").split("\0")
    if t == 4:
        return h.value_dword(v)
    return h.value_string(v) if t in (1, 2) else h.value_value(v)[1]


def test_inspection_sees_each_windows(handle, devices: dict[str, str], roots: dict[str, str]):
    assert sorted(roots) == sorted(EXPECTED), "the BitLocker guest has no OS to find"
    for name, (osinfo, arch, major, minor, variant) in EXPECTED.items():
        r = roots[name]
        assert r == devices[name] + "2", name
        got = (handle.inspect_get_type(r), handle.inspect_get_distro(r), handle.inspect_get_osinfo(r),
               handle.inspect_get_arch(r), handle.inspect_get_major_version(r), handle.inspect_get_minor_version(r),
               handle.inspect_get_product_variant(r), handle.inspect_get_windows_current_control_set(r),
               handle.inspect_get_windows_systemroot(r), handle.inspect_get_format(r))
        assert got == ("windows", "windows", osinfo, arch, major, minor, variant, "ControlSet001", "/Windows",
                       "installed"), name
        # MountedDevices resolves to this guest's own disk (by MBR signature or GPT GUID) among all.
        assert handle.inspect_get_drive_mappings(r) == {"C": devices[name] + "2"}, name
    assert handle.inspect_get_hostname(roots["win2k22"]) == "win2k22-phony"
    assert "2022" in handle.inspect_get_product_name(roots["win2k22"])
    handle.mount_ro(roots["win2k22"], "/")  # applications are read from the mounted guest's hive
    try:
        apps = {a["app2_name"]: a for a in handle.inspect_list_applications2(roots["win2k22"])}
    finally:
        handle.umount_all()
    assert apps["KES"]["app2_display_name"] == "Kaspersky Endpoint Security"
    assert apps["KES"]["app2_publisher"] == "AO Kaspersky Lab"
    assert {a["app2_display_name"] for a in apps.values()} >= {"VMware Tools", "Parallels Tools",
                                                               "Red Hat Paravirtualized Xen Drivers for Windows(R)"}


def test_hibernated_guest_mounts_only_read_only(handle, devices: dict[str, str]):
    """Debian 12's ntfs-3g does not refuse a hibernated volume: `mount` succeeds but falls back to
    read-only, silently (hence virt-v2v's write probe after mounting, RHBZ#1567763)."""
    windows = devices["win2k22-hibernated"] + "2"
    handle.mount(windows, "/")
    try:
        assert handle.pread("/hiberfil.sys", 4, 0) == b"HIBR"
        with pytest.raises(RuntimeError):
            handle.touch("/v2v-write-probe")
    finally:
        handle.umount_all()


def test_truncated_hive_fails_inspection(windows_guests: dict[str, Path]):
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(windows_guests["win2k22-truncated-hive"]), format="raw", readonly=True)
        g.launch()
        with pytest.raises(RuntimeError, match="Hivex.Error"):
            g.inspect_os()
    finally:
        g.close()


def test_bitlocker_guest_is_a_bitlocker_volume(handle, devices: dict[str, str]):
    assert handle.vfs_type(devices["win2k22-bitlocker"] + "2") == "BitLocker"


def test_uefi_guest_has_esp_bcd_and_no_fallback_loader(handle, devices: dict[str, str], tmp_path: Path):
    dev = devices["win11"]
    assert handle.part_get_gpt_type(dev, 1) == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    handle.mount_ro(dev + "1", "/")
    try:
        assert handle.is_file("/EFI/Microsoft/Boot/bootmgfw.efi")
        assert not handle.exists("/EFI/Boot/bootx64.efi")
    finally:
        handle.umount_all()
    bcd = hive(handle, tmp_path, dev + "1", "/EFI/Microsoft/Boot/BCD")
    loader = value(bcd, "\\Objects\\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\\Elements\\23000003", "Element")
    assert value(bcd, f"\\Objects\\{loader}\\Elements\\16000046", "Element") == b"\x01"
    system = hive(handle, tmp_path, dev + "2", "/Windows/System32/config/SYSTEM")
    assert value(system, "\\ControlSet001\\Control\\TimeZoneInformation", "RealTimeIsUniversal") == 1
    assert system.node_get_child(system.root(), "DriverDatabase") is not None


def test_win2k22_hives_hold_what_conversion_edits(handle, devices: dict[str, str], tmp_path: Path):
    windows = devices["win2k22"] + "2"
    system = hive(handle, tmp_path, windows, "/Windows/System32/config/SYSTEM")
    static = f"{INTERFACES}\\{{3f2a1b10-5c6d-4e7f-8a9b-0c1d2e3f4a01}}"
    assert value(system, static, "EnableDHCP") == 0
    assert value(system, static, "IPAddress") == ["192.168.122.10"]
    assert value(system, static, "SubnetMask") == ["255.255.255.0"]
    assert value(system, static, "DefaultGateway") == ["192.168.122.1"]
    assert value(system, static, "NameServer") == "192.168.122.1,8.8.8.8"
    assert value(system, f"{INTERFACES}\\{{3f2a1b10-5c6d-4e7f-8a9b-0c1d2e3f4a03}}", "EnableDHCP") == 1
    net_class = "\\ControlSet001\\Control\\Class\\{4d36e972-e325-11ce-bfc1-08002be10318}"
    assert value(system, f"{net_class}\\0001", "NetCfgInstanceId") == "{3F2A1B10-5C6D-4E7F-8A9B-0C1D2E3F4A01}"
    assert value(system, f"{net_class}\\0001", "NetworkAddress") == "005056A1B2C3"
    connections = "\\ControlSet001\\Control\\Network\\{4D36E972-E325-11CE-BFC1-08002BE10318}"
    assert [value(system, f"{connections}\\{{3F2A1B10-5C6D-4E7F-8A9B-0C1D2E3F4A0{i + 1}}}\\Connection", "Name")
            for i in range(3)] == ["Ethernet0", "Ethernet1", "Ethernet2"]
    disk_class = "\\ControlSet001\\Control\\Class\\{4d36e967-e325-11ce-bfc1-08002be10318}"
    assert value(system, disk_class, "LowerFilters") == ["prl_strg", "EhStorClass"]
    assert value(system, "\\ControlSet001\\Services\\prl_fs", "Start") == 1
    assert value(system, "\\ControlSet001\\Services\\rhelscsi", "Start") == 0
    assert value(system, "\\ControlSet001\\Control\\CrashControl", "AutoReboot") == 1
    tz = system.node_values(node(system, "\\ControlSet001\\Control\\TimeZoneInformation"))
    assert "RealTimeIsUniversal" not in [system.value_key(v) for v in tz]

    software = hive(handle, tmp_path, windows, "/Windows/System32/config/SOFTWARE")
    assert value(software, "\\Microsoft\\Windows\\CurrentVersion", "DevicePath") == "%SystemRoot%\\inf"
    assert software.value_type(software.node_get_value(node(software, "\\Microsoft\\Windows\\CurrentVersion"),
                                                       "DevicePath"))[0] == 2  # REG_EXPAND_SZ
    assert software.node_children(node(software, "\\Microsoft\\Windows\\CurrentVersion\\Group Policy\\History"))
    vmware = [k for k in software.node_children(node(software, UNINSTALL))
              if value(software, f"{UNINSTALL}\\{software.node_name(k)}", "DisplayName") == "VMware Tools"]
    assert len(vmware) == 1
    assert value(software, f"{UNINSTALL}\\{software.node_name(vmware[0])}", "UninstallString").startswith(
        "MsiExec.exe /I{")
    xen = software.node_get_value(node(software, f"{UNINSTALL}\\Red Hat Paravirtualized Xen Drivers for Windows(R)"),
                                  "UninstallString")
    raw = software.value_value(xen)[1]
    assert raw.endswith("uninst.exe\0".encode("utf-16-le")), "REG_SZ keeps its terminating NUL, as Windows writes it"


def test_fake_virtio_win(handle, devices: dict[str, str], virtio_win: Path, virt_tools_dir: Path):
    assert (virtio_win / "drivers/by-os/amd64/2k22/viostor.sys").read_text().startswith("fake virtio-win")
    assert (virtio_win / "drivers/by-os/i386/w7/netkvm.inf").is_file()
    assert (virtio_win / "drivers/by-driver/viostor/2k22/amd64/viostor.pdb").is_file()
    assert (virtio_win / "guest-agent/qemu-ga-i386.msi").is_file()
    assert not [p for p in virtio_win.rglob("*") if "/xp/" in f"/{p.relative_to(virtio_win)}/"]
    assert (virt_tools_dir / "rhsrvany.exe").read_text() == RHSRVANY
    # The image is a filesystem on the whole device, as a conversion opens it.
    handle.mount_ro(devices["virtio-win"], "/")
    try:
        files = set(handle.find("/"))
    finally:
        handle.umount_all()
    assert {"viostor/2k22/amd64/viostor.sys", "Balloon/2k22/amd64/blnsvr.exe", "sriov/2k22/amd64/vioprot.inf",
            "NetKVM/w10/amd64/netkvm.inf", "guest-agent/qemu-ga-x86_64.msi"} <= files
