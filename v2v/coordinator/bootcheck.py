"""The boot check as the orchestrators run it (docs/verify.md): the coordinator's verify step and a
warm cutover's. One VerifyBoot call's events relayed, its result turned into a note, a warning or
the guest's failure; at most $V2V_VERIFY_BOOTS checks at a time in this process (each boots a guest
and costs a CPU)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.services.verify.summary import summary
from v2v.steps import Step
from v2v.v1 import types_pb2 as pb
from v2v.v1 import verify_pb2

VERIFY_SLOTS = threading.BoundedSemaphore(max(1, int(os.environ.get("V2V_VERIFY_BOOTS", "1") or 1)))


def no_verify_service(where: str) -> V2VError:
    return V2VError(f"{where} has no verify service (give it one, or run the services embedded)",
                    pb.ERROR_CODE_SERVICE_UNAVAILABLE)


def boot_verdict(call: Iterable[verify_pb2.VerifyEvent], relay: Callable[[pb.StepEvent], None],
                 report: StepReporter) -> verify_pb2.VerifyResult:
    """Reads one VerifyBoot call to its end: its sub-steps relayed (the service's own verify step is
    the caller's), then a booted guest noted, an unchecked one warned (never a pass), and a failed
    boot raised as ERROR_CODE_BOOT_FAILED with the console's last lines as its detail."""
    result = None
    for ev in call:
        if ev.HasField("result"):
            result = ev.result
        elif ev.step.parent:
            relay(ev.step)
    if result is None:
        raise V2VError("the verify service ended without a result", pb.ERROR_CODE_INTERNAL)
    if result.outcome == verify_pb2.VERIFY_OUTCOME_BOOTED:
        report.note(summary(result), step=Step.VERIFY)
    elif result.outcome == verify_pb2.VERIFY_OUTCOME_NOT_CHECKED:
        report.warn(f"boot not checked: {result.message}", step=Step.VERIFY)
    else:
        raise V2VError(f"the converted guest did not boot: {result.message}", pb.ERROR_CODE_BOOT_FAILED,
                       detail="\n".join(result.console_tail))
    return result
