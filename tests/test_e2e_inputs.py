"""The real guest converted from its other forms, -i vmx and -i libvirtxml, boots under virtio.
(-i ova is proven by the `converted` fixture, which the output tests boot; -i disk by test_e2e.)
Both conversions run first, then both boots at once: a TCG boot of a one-vCPU guest keeps one core
busy, so two boots side by side cost about one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GUESTS, V2V, sha256

pytestmark = pytest.mark.e2e


@dataclass
class Converted:
    rc: int
    stderr: str
    source_sha: str
    source_sha_after: str
    boot: subprocess.CompletedProcess[str] | None = None


def libvirt_xml(real_guest: Path) -> str:
    return f"""<domain type="kvm">
  <name>debian12-from-xml</name>
  <memory unit="GiB">1</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64">hvm</type></os>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source file="{real_guest.with_suffix('.qcow2')}"/>
      <target dev="sda" bus="scsi"/>
    </disk>
    <interface type="network"><source network="default"/><mac address="00:50:56:a1:b2:c3"/></interface>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def converted_inputs(real_guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Converted]]:
    top = tmp_path_factory.mktemp("inputs")
    xml = top / "guest.xml"
    xml.write_text(libvirt_xml(real_guest))
    vmx_dir = real_guest.parent / "vmx"
    forms = {"vmx": (vmx_dir / "debian12-vmware-flat.vmdk", ["-i", "vmx", str(vmx_dir / "debian12-vmware.vmx")]),
             "libvirtxml": (real_guest.with_suffix(".qcow2"), ["-i", "libvirtxml", str(xml)])}
    root = Path(tempfile.mkdtemp(prefix="v2v-i.", dir="/tmp"))
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(root), COLUMNS="120")
    runs: dict[str, Converted] = {}
    try:
        for form, (source, args) in forms.items():
            out = top / form
            out.mkdir()
            before = sha256(source)
            p = subprocess.run([str(V2V), *args, "-o", "local", "-os", str(out), "-of", "qcow2", "-on", "g", "--accel",
                                "tcg", "-q"], capture_output=True, text=True, env=env, timeout=900, check=False)
            runs[form] = Converted(p.returncode, p.stderr, before, sha256(source))
        boots = {form: subprocess.Popen([GUESTS / "boot-test.sh", "-b", "virtio", "-t", "600", "-l",
                                         top / form / "serial.log", top / form / "g-sda"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for form, run in runs.items() if run.rc == 0}
        for form, boot in boots.items():
            out_text, err_text = boot.communicate(timeout=900)
            runs[form].boot = subprocess.CompletedProcess(boot.args, boot.returncode, out_text, err_text)
        yield runs
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("form", ["vmx", "libvirtxml"])
def test_converted_from_each_form_boots(converted_inputs: dict[str, Converted], form: str) -> None:
    run = converted_inputs[form]
    assert run.rc == 0, run.stderr
    assert run.boot is not None
    assert run.boot.returncode == 0, run.boot.stdout + run.boot.stderr
    assert "root=/dev/vda3" in run.boot.stdout and "failed-units=none" in run.boot.stdout
    assert run.source_sha_after == run.source_sha
