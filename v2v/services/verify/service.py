"""The Verify gRPC service: boots a guest's disks in a throw-away qemu (qemu.py) and decides from
what it sees, best first: qemu-guest-agent, the probe added to the overlay (probe.py), the serial
console (console.py). A guest that does not boot is a result, FAILED with its cause; a Windows guest
without an agent is NOT_CHECKED, never a pass."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from v2v.errors import V2VError
from v2v.events import step_event
from v2v.grpcserver import stream_rpc
from v2v.kvm import kvm_usable
from v2v.networks import cidr
from v2v.services.verify.agent import GuestAgent
from v2v.services.verify.console import LOGIN, PROBE_PREFIX, ConsoleLog, classify
from v2v.services.verify.probe import add_probe, parse_probe
from v2v.services.verify.qemu import BootDisk, BootSpec, QemuBoot
from v2v.services.verify.summary import summary
from v2v.v1 import convert_pb2, verify_pb2, verify_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import default_root

STEP = "verify"
DEFAULT_TIMEOUT = 600
POLL_SECONDS = 0.5
AGENT_EVERY = 3.0  # seconds between guest-agent pings
LOGIN_GRACE = 30.0  # after a login prompt, how long the probe or agent may still take to report
KVM_SILENCE = 30.0  # auto picked KVM and the console stays empty this long: KVM hangs here, use TCG
FAILED_TAIL = 2.0  # after a failure sign, the console's last words

Send = Callable[[pb.StepEvent], None]
STOPPED = {verify_pb2.VERIFY_CAUSE_PANIC: "the kernel panicked",
           verify_pb2.VERIFY_CAUSE_INITRAMFS_SHELL: "the initramfs found no root filesystem and dropped to a shell",
           verify_pb2.VERIFY_CAUSE_EMERGENCY_MODE: "systemd stopped in emergency mode",
           verify_pb2.VERIFY_CAUSE_NO_BOOT_DEVICE: "the firmware found nothing to boot"}


def choose_accel(requested: int) -> tuple[str, bool]:
    """(kvm or tcg, whether it may fall back to TCG): AUTO takes KVM where /dev/kvm works unless
    $V2V_ACCEL or libguestfs' force_tcg says TCG."""
    if requested == convert_pb2.ACCELERATOR_KVM:
        return "kvm", False
    if requested == convert_pb2.ACCELERATOR_TCG:
        return "tcg", False
    if os.environ.get("V2V_ACCEL") == "tcg" or "force_tcg" in os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", ""):
        return "tcg", False
    return ("kvm", True) if kvm_usable() else ("tcg", False)


def boot_spec(req: verify_pb2.VerifyRequest, accel: str) -> BootSpec:
    """The request's machine, with what it leaves unset taken from its TargetMeta."""
    t = req.target
    disks = [BootDisk(d.path, d.format, d.bus or pb.BLOCK_BUS_VIRTIO_BLK) for d in req.disks] or \
            [BootDisk(d.path, d.format, d.bus or t.caps.block_bus or pb.BLOCK_BUS_VIRTIO_BLK) for d in t.disks]
    if not disks:
        raise V2VError("no disk to boot", pb.ERROR_CODE_BAD_INPUT, step=STEP, guest=req.guest)
    firmware = req.firmware or t.firmware or pb.FIRMWARE_BIOS
    machine = req.machine or t.caps.machine or (pb.MACHINE_Q35 if firmware == pb.FIRMWARE_UEFI else pb.MACHINE_I440FX)
    return BootSpec(disks=disks, firmware=firmware, secure_boot=req.secure_boot or t.caps.secure_boot,
                    machine=machine, nics=list(req.nics or t.nics), accel=accel, memory_mb=req.memory_mb or 1024)


def expected_nics(req: verify_pb2.VerifyRequest) -> list[verify_pb2.ExpectedNic]:
    """The request's, then what its target says the guest will come up with: each NIC whose name the
    network step kept, with its MAC and the static addresses kept for that MAC."""
    given = list(req.expected_nics)
    t = req.target
    return given + [verify_pb2.ExpectedNic(name=n.guest_name, mac=n.mac,
                                           addresses=[cidr(s) for s in t.static_ips
                                                      if s.mac.lower() == n.mac.lower()])
                    for n in t.nics if n.guest_name and n.guest_name not in {w.name for w in given}]


def expected_mounts(req: verify_pb2.VerifyRequest) -> list[str]:
    """The request's, then every mountpoint inspection read from the target guest's fstab."""
    return list(dict.fromkeys([*req.expected_mounts, *sorted(req.target.inspection.mountpoints)]))


def expectations(req: verify_pb2.VerifyRequest) -> str:
    """Strict mode's expectations in one line, e.g. "NIC ens192 (52:54:00:12:34:56, 192.0.2.10/24);
    mounts /, /boot; no failed unit"."""
    nics = [f"NIC {n.name} ({', '.join(filter(None, [n.mac, *n.addresses]))})" if n.mac or n.addresses else
            f"NIC {n.name}" for n in expected_nics(req)]
    mounts = expected_mounts(req)
    return "; ".join([*nics, *([f"mounts {', '.join(mounts)}"] if mounts else []), "no failed unit"])


def mismatches(req: verify_pb2.VerifyRequest, by: int, obs: verify_pb2.Observed) -> list[verify_pb2.Mismatch]:
    """Strict mode: every expected NIC, address and mount that the guest came up without, and every
    failed unit."""
    M = verify_pb2.Mismatch
    if by not in (verify_pb2.OBSERVED_BY_PROBE, verify_pb2.OBSERVED_BY_GUEST_AGENT):
        return [M(kind=M.KIND_NOT_OBSERVABLE, message="only the console answered: NICs and mounts cannot be checked")]
    found: list[verify_pb2.Mismatch] = []
    have = ", ".join(n.name for n in obs.nics)
    for want in expected_nics(req):
        nic = next((n for n in obs.nics if n.name == want.name), None) or \
            next((n for n in obs.nics if want.mac and n.mac == want.mac.lower()), None)
        if nic is None:
            found.append(M(kind=M.KIND_NIC_MISSING, name=want.name, expected=want.mac,
                           actual=have,
                           message=f"no NIC {want.name} (the guest has: {have or 'none'})"))
            continue
        if nic.name != want.name:
            found.append(M(kind=M.KIND_NIC_MISSING, name=want.name, expected=want.name, actual=nic.name,
                           message=f"NIC {want.mac} came up as {nic.name}, not {want.name}"))
        for addr in want.addresses:
            if addr not in nic.addresses:
                found.append(M(kind=M.KIND_ADDRESS_MISSING, name=want.name, expected=addr,
                               actual=", ".join(nic.addresses),
                               message=f"NIC {nic.name} lacks {addr} (has: {', '.join(nic.addresses) or 'none'})"))
    if by == verify_pb2.OBSERVED_BY_PROBE:  # the agent reports neither mounts nor units
        mounted = {m.mountpoint for m in obs.mounts}
        for mp in expected_mounts(req):
            if mp not in mounted:
                found.append(M(kind=M.KIND_MOUNT_MISSING, name=mp, expected=mp, message=f"{mp} is not mounted"))
        for unit in obs.failed_units:
            found.append(M(kind=M.KIND_FAILED_UNIT, name=unit, message=f"unit {unit} failed"))
    return found


class BootCheck:
    """One VerifyBoot call: the boot, watched until a decision."""

    def __init__(self, req: verify_pb2.VerifyRequest, root: Path, send: Send) -> None:
        self.req = req
        self.root = root
        self.send = send
        self.guest = req.guest
        self.cancelled = False
        self.boot: QemuBoot | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.boot is not None:
            self.boot.stop()

    def _step(self, name: str, state: pb.StepState, seconds: float | None = None, message: str = "",
              error: V2VError | None = None) -> None:
        self.send(step_event(self.guest, name, state, parent=STEP, seconds=seconds, message=message, error=error))

    def _timed(self, name: str, fn: Callable[[], object], message: str = "") -> object:
        self._step(name, pb.STEP_STATE_STARTED, message=message)
        t0 = time.monotonic()
        try:
            out = fn()
        except V2VError as err:
            err.fill(step=STEP, guest=self.guest)
            self._step(name, pb.STEP_STATE_FAILED, time.monotonic() - t0, error=err)
            raise
        self._step(name, pb.STEP_STATE_SUCCEEDED, time.monotonic() - t0)
        return out

    def run(self) -> verify_pb2.VerifyResult:
        accel, may_fall_back = choose_accel(self.req.accelerator)
        spec = boot_spec(self.req, accel)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.req.mode == verify_pb2.VERIFY_MODE_STRICT:  # said before the boot, so a watcher knows what counts
            self._step("expect", pb.STEP_STATE_NOTE, message=expectations(self.req))
        t0 = time.monotonic()
        with QemuBoot(spec, self.root) as boot:
            self.boot = boot
            self._timed("overlay", boot.make_overlays)
            os_type = self.req.os_type
            probed = False
            if not os_type or os_type == "linux":
                guest_os = self._timed("probe", lambda: add_probe(boot.overlays, accel))
                os_type, probed = guest_os.type, guest_os.probe_added  # type: ignore[attr-defined]
            result = self._timed("boot", lambda: self._watch(boot, os_type, probed, may_fall_back),
                                 message=f"accel={spec.accel}")
            assert isinstance(result, verify_pb2.VerifyResult)
        result.guest = self.guest
        result.seconds = time.monotonic() - t0
        result.accelerator = convert_pb2.ACCELERATOR_KVM if spec.accel == "kvm" else convert_pb2.ACCELERATOR_TCG
        if self.req.mode == verify_pb2.VERIFY_MODE_STRICT and result.outcome == verify_pb2.VERIFY_OUTCOME_BOOTED:
            result.mismatches.extend(mismatches(self.req, result.observed_by, result.observed))
            if result.mismatches:
                result.outcome, result.cause = verify_pb2.VERIFY_OUTCOME_FAILED, verify_pb2.VERIFY_CAUSE_MISMATCH
                result.message = "; ".join(m.message for m in result.mismatches)
        return result

    def _watch(self, boot: QemuBoot, os_type: str, probed: bool,
               may_fall_back: bool) -> verify_pb2.VerifyResult:
        timeout = self.req.timeout_seconds or DEFAULT_TIMEOUT
        console, agent = ConsoleLog(boot.console), GuestAgent(boot.agent_socket)
        qemu = boot.start()
        started = time.monotonic()
        next_agent = started + AGENT_EVERY
        login_at: float | None = None
        failed: tuple[verify_pb2.VerifyCause, float] | None = None  # (cause, when)
        result = verify_pb2.VerifyResult()

        def booted(by: verify_pb2.ObservedBy, obs: verify_pb2.Observed | None, message: str) -> verify_pb2.VerifyResult:
            result.outcome, result.observed_by = verify_pb2.VERIFY_OUTCOME_BOOTED, by
            result.seconds_to_userspace = (login_at or time.monotonic()) - started if by == \
                verify_pb2.OBSERVED_BY_CONSOLE else time.monotonic() - started
            if obs is not None:
                result.observed.CopyFrom(obs)
            result.message = message
            return result

        try:
            while True:
                if self.cancelled:
                    raise V2VError("boot check cancelled", pb.ERROR_CODE_CANCELLED, step=STEP, guest=self.guest)
                now = time.monotonic()
                for line in console.lines():
                    if line.startswith(PROBE_PREFIX) and (obs := parse_probe(line[len(PROBE_PREFIX):])):
                        return booted(verify_pb2.OBSERVED_BY_PROBE, obs, "the probe reported (on the console)")
                    sign = classify(line)
                    if sign == LOGIN and login_at is None and failed is None:
                        login_at = now
                    elif sign is not None and not isinstance(sign, str) and failed is None and login_at is None:
                        failed = (sign, now)
                if boot.probe_log.exists():
                    for line in boot.probe_log.read_text(errors="replace").splitlines():
                        if obs := parse_probe(line):
                            return booted(verify_pb2.OBSERVED_BY_PROBE, obs, "the probe reported")
                if now >= next_agent and failed is None:
                    next_agent = now + AGENT_EVERY
                    if agent.answers(timeout=1.0):
                        return booted(verify_pb2.OBSERVED_BY_GUEST_AGENT, agent.observe(), "the guest agent answered")
                if failed is not None and now - failed[1] >= FAILED_TAIL:
                    result.outcome, result.cause = verify_pb2.VERIFY_OUTCOME_FAILED, failed[0]
                    result.message = STOPPED[failed[0]]
                    return result
                if login_at is not None and (not probed or now - login_at >= LOGIN_GRACE):
                    return booted(verify_pb2.OBSERVED_BY_CONSOLE, None, "a login prompt on the console")
                if not qemu.running():
                    if login_at is not None:
                        return booted(verify_pb2.OBSERVED_BY_CONSOLE, None, "a login prompt on the console")
                    if not console.last_lines() and qemu.returncode() != 0:
                        raise qemu.failure("boot check").fill(step=STEP, guest=self.guest)
                    result.outcome, result.cause = verify_pb2.VERIFY_OUTCOME_FAILED, verify_pb2.VERIFY_CAUSE_POWERED_OFF
                    result.message = "the guest stopped before reaching userspace"
                    return result
                if may_fall_back and boot.spec.accel == "kvm" and now - started >= KVM_SILENCE \
                        and not console.last_lines():
                    boot.stop()  # KVM guests hang on some hosts before printing a thing
                    boot.spec.accel, may_fall_back = "tcg", False
                    qemu, started = boot.start(), time.monotonic()
                    continue
                if now - started >= timeout:
                    if os_type == "windows":
                        result.outcome, result.cause = verify_pb2.VERIFY_OUTCOME_NOT_CHECKED, \
                            verify_pb2.VERIFY_CAUSE_NO_AGENT
                        result.message = "not checked: no agent (a Windows guest without qemu-guest-agent)"
                    else:
                        result.outcome, result.cause = verify_pb2.VERIFY_OUTCOME_FAILED, \
                            verify_pb2.VERIFY_CAUSE_TIMEOUT
                        result.message = f"no sign of userspace within {timeout} s"
                    return result
                time.sleep(POLL_SECONDS)
        finally:
            console.lines()
            result.console_tail.extend(console.last_lines())
            agent.close()
            boot.stop()


class VerifyService(verify_pb2_grpc.VerifyServicer):
    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    def check(self, req: verify_pb2.VerifyRequest, send: Send,
              on_cancel: Callable[[Callable[[], None]], object] | None = None) -> verify_pb2.VerifyResult:
        """The check, in this process: events to `send`; `on_cancel` registers what stops it."""
        job = BootCheck(req, (self.root or default_root()) / "verify", send)
        if on_cancel is not None:
            on_cancel(job.cancel)
        send(step_event(req.guest, STEP, pb.STEP_STATE_STARTED))
        t0 = time.monotonic()
        try:
            result = job.run()
        except V2VError as err:
            err.fill(step=STEP, guest=req.guest)
            send(step_event(req.guest, STEP, pb.STEP_STATE_FAILED, seconds=time.monotonic() - t0, error=err))
            raise
        if result.outcome == verify_pb2.VERIFY_OUTCOME_BOOTED:
            send(step_event(req.guest, STEP, pb.STEP_STATE_SUCCEEDED, seconds=time.monotonic() - t0,
                            message=summary(result)))
        else:
            send(step_event(req.guest, STEP, pb.STEP_STATE_FAILED, seconds=time.monotonic() - t0,
                            error=V2VError(result.message, pb.ERROR_CODE_BOOT_FAILED, step=STEP, guest=req.guest)))
        return result

    @stream_rpc
    def VerifyBoot(self, request: verify_pb2.VerifyRequest,
                   context: grpc.ServicerContext) -> Iterator[verify_pb2.VerifyEvent]:
        events: queue.Queue[verify_pb2.VerifyEvent | BaseException | None] = queue.Queue()

        def work() -> None:
            try:
                res = self.check(request, lambda ev: events.put(verify_pb2.VerifyEvent(step=ev)),
                                 context.add_callback)
                events.put(verify_pb2.VerifyEvent(result=res))
                events.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the stream's thread
                events.put(exc)

        worker = threading.Thread(target=work, name=f"verify-{request.guest}", daemon=True)
        worker.start()
        try:
            while (item := events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            worker.join()
