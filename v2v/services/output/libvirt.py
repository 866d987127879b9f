"""-o libvirt: the disks become volumes NAME-sda, NAME-sdb, ... of a libvirt storage pool of type
"dir", and the guest a domain defined (not started) on that libvirt connection.

The volumes are written as files straight into the pool's directory, with the same qemu-img and NBD
servers as the directory outputs (v2v.services.output.files), so the pool must be on this machine;
libvirt only learns of them by a pool refresh. The domain is libvirtxml.domain_xml() with its
<domain type> set to what the host can run (kvm, or qemu's software emulation)."""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from pathlib import Path

from v2v.drives import drive_letters
from v2v.errors import V2VError
from v2v.kvm import kvm_usable
from v2v.libvirtconn import connect, failed, libvirt
from v2v.plugins import OutputArgs, OutputCli
from v2v.services.output.base import OUTPUTS, OutputPlugin
from v2v.services.output.files import create_disks, disk_format, refuse_existing, serve_disks, target_exists
from v2v.services.output.libvirtxml import domain_xml, libvirt_arch
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

DEFAULT_URI = "qemu:///system"
DEFAULT_POOL = "default"
DOMAIN_TYPES = ("kvm", "qemu")
# In the work directory: the UUID of the domain finalize defines, written before defining it, so
# that abort undefines that domain and never one of the same name that is not ours.
DOMAIN_MARK = "libvirt-domain.uuid"



def _uri(spec: output_pb2.OutputSpec) -> str:
    return spec.libvirt.uri or DEFAULT_URI


def _pool_name(spec: output_pb2.OutputSpec) -> str:
    return spec.libvirt.pool or DEFAULT_POOL


def volume_name(name: str, index: int) -> str:
    """NAME-sda, NAME-sdb, ... whatever the target bus: the names virt-v2v gives the volumes."""
    return f"{name}-sd{drive_letters(index)}"


def domain_uri(uri: str, name: str) -> str:
    """The pseudo-file finalize reports for the domain it defined, after the disks."""
    return f"libvirt:{uri}/domain/{name}"


def _dir_pool(conn: libvirt.virConnect, name: str, uri: str) -> tuple[libvirt.virStoragePool, Path]:
    """The pool and its directory, which must be on this machine: the volumes are written here."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise V2VError(f"-os {name}: libvirt at {uri} has no storage pool {name!r}",
                           pb.ERROR_CODE_BAD_INPUT) from None
        raise failed(f"cannot look up storage pool {name}", exc) from None
    pool_xml = ET.fromstring(pool.XMLDesc(0))
    if pool_xml.get("type") != "dir":
        raise V2VError(f"-os {name}: storage pool {name} is of type {pool_xml.get('type')!r}; -o libvirt writes "
                       "to pools of type 'dir'", pb.ERROR_CODE_BAD_INPUT)
    if not pool.isActive():
        raise V2VError(f"-os {name}: storage pool {name} is not active (virsh pool-start {name})",
                       pb.ERROR_CODE_BAD_INPUT)
    directory = Path(pool_xml.findtext("target/path") or "")
    if not directory.is_absolute() or not directory.is_dir():
        raise V2VError(f"-os {name}: the directory of storage pool {name} ({directory}) is not on this machine",
                       pb.ERROR_CODE_BAD_INPUT)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise V2VError(f"-os {name}: cannot write to the directory of storage pool {name} ({directory})",
                       pb.ERROR_CODE_BAD_INPUT)
    return pool, directory


def _refresh(pool: libvirt.virStoragePool) -> None:
    try:
        pool.refresh(0)
    except libvirt.libvirtError as exc:
        raise failed(f"cannot refresh storage pool {pool.name()}", exc) from None


def _lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise failed(f"cannot look up domain {name}", exc) from None


def _unsupported(conn: libvirt.virConnect, domain_type: str, arch: str | None) -> str:
    """Why the connection cannot run `arch` guests (None: the host's) under `domain_type`; "" if it can."""
    try:
        conn.getDomainCapabilities(None, arch, None, domain_type, 0)
    except libvirt.libvirtError as exc:
        message: str = exc.get_error_message()
        return message
    return ""


def domain_type(conn: libvirt.virConnect, spec: output_pb2.OutputSpec, arch: str | None) -> str:
    """-oo domain-type, checked against the host; unset: kvm where it works, else qemu."""
    wanted = spec.libvirt.domain_type
    if not wanted:
        return "kvm" if not _unsupported(conn, "kvm", arch) and kvm_usable() else "qemu"
    if wanted not in DOMAIN_TYPES:
        raise V2VError(f"-oo domain-type={wanted}: must be one of {', '.join(DOMAIN_TYPES)}", pb.ERROR_CODE_BAD_INPUT)
    if why := _unsupported(conn, wanted, arch):
        raise V2VError(f"-oo domain-type={wanted}: libvirt at {_uri(spec)} cannot run {arch or 'this host'}'s "
                       f"guests that way: {why}", pb.ERROR_CODE_BAD_INPUT)
    return wanted


def _undefine(dom: libvirt.virDomain) -> None:
    """Removes a domain's definition with what libvirt keeps beside it (NVRAM, saved state, snapshot
    metadata): all of it belongs to the guest being replaced or aborted."""
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise failed(f"cannot undefine domain {dom.name()}", exc) from None


def _from_cli(a: OutputArgs) -> output_pb2.LibvirtOutput:
    return output_pb2.LibvirtOutput(uri=a.uri, pool=a.storage, domain_type=a.oo.value("domain-type"))


@OUTPUTS.register("libvirt")
class LibvirtOutput(OutputPlugin):
    cli = OutputCli(["libvirt"], _from_cli,
                    oo=[("domain-type=kvm|qemu", "the <domain type> (default: kvm if the host offers it)")])

    target_is_zero = True  # fresh files from qemu-img, as in files.FileOutput

    def _check(self, conn: libvirt.virConnect, spec: output_pb2.OutputSpec,
               target: pb.TargetMeta) -> tuple[libvirt.virStoragePool, Path]:
        uri, name = _uri(spec), target.name
        pool, directory = _dir_pool(conn, _pool_name(spec), uri)
        domain_type(conn, spec, libvirt_arch(target.caps.arch) or None)
        dom = _lookup_domain(conn, name)
        if dom is not None and (not spec.overwrite or dom.isActive()):
            running = " and is running" if dom.isActive() else ""
            raise V2VError(f"libvirt at {uri} already has a domain {name}{running}; remove it or choose another "
                           "name with -on", pb.ERROR_CODE_TARGET_EXISTS)
        if spec.overwrite:
            return pool, directory
        volumes = [volume_name(name, d.index) for d in target.source.disks]
        pooled = set(pool.listVolumes())
        if taken := [v for v in volumes if v in pooled]:
            raise target_exists([directory / v for v in taken])
        refuse_existing([directory / v for v in volumes])  # files the pool has not been refreshed to see
        return pool, directory

    def check(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> None:
        disk_format(spec)
        with connect(_uri(spec)) as conn:
            self._check(conn, spec, target)

    def setup(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir,
              stack: ExitStack) -> None:
        with connect(_uri(spec)) as conn:
            pool, directory = self._check(conn, spec, target)
            create_disks(spec, target, [directory / volume_name(target.name, d.index) for d in target.source.disks],
                         workdir, stack)
            _refresh(pool)  # on failure, abort's refresh drops the volumes made so far

    def serve(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir, stack: ExitStack) -> None:
        serve_disks(target, workdir, stack)  # the pool's files, as setup made them

    def finalize(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> list[str]:
        uri, name = _uri(spec), target.name
        with connect(uri) as conn:
            pool, _ = _dir_pool(conn, _pool_name(spec), uri)
            _refresh(pool)  # the volumes' allocation and format, now that they hold the data
            arch = libvirt_arch(target.caps.arch or target.inspection.arch) or None
            domain_uuid = str(uuid.uuid4())
            xml = domain_xml(target, list(target.disks), domain_type(conn, spec, arch), domain_uuid)
            if (dom := _lookup_domain(conn, name)) is not None:
                if not spec.overwrite or dom.isActive():
                    raise V2VError(f"libvirt at {uri} has a domain {name} since the check; remove it or choose "
                                   "another name with -on", pb.ERROR_CODE_TARGET_EXISTS)
                _undefine(dom)  # --overwrite: the volumes it used were already replaced
            (workdir.path / DOMAIN_MARK).write_text(domain_uuid + "\n")
            try:
                conn.defineXML(xml)
            except libvirt.libvirtError as exc:
                raise failed(f"cannot define domain {name}", exc) from None
        return [disk.path for disk in target.disks] + [domain_uri(uri, name)]

    def abort(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> None:
        for disk in target.disks:  # first, so the disks go even when libvirt cannot be reached
            Path(disk.path).unlink(missing_ok=True)
        mark = workdir.path / DOMAIN_MARK
        domain_uuid = mark.read_text().strip() if mark.exists() else ""
        if not target.disks and not domain_uuid:
            return
        try:
            with connect(_uri(spec)) as conn:
                if domain_uuid:
                    try:
                        _undefine(conn.lookupByUUIDString(domain_uuid))
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                            raise failed(f"cannot look up domain {target.name}", exc) from None
                    mark.unlink()
                _refresh(_dir_pool(conn, _pool_name(spec), _uri(spec))[0])
        except V2VError:
            # A stale pool listing only lasts until its next refresh; a domain left defined is a
            # guest whose disks are gone, which must be reported.
            if mark.exists():
                raise
