"""Which servicer serves each phase service: what `v2v serve NAME` and embedded mode start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from v2v.workdir import remove_dead_sockets

PHASES = ("input", "convert", "output", "copier")
# Services `v2v serve` runs besides the coordinators: the phases and the boot check (docs/verify.md).
SERVICES = (*PHASES, "verify")


def phase_servicer(name: str, root: Path | None = None) -> tuple[Any, Callable[[Any, grpc.Server], None], str]:
    """(servicer, add-to-server function, full service name) of a phase service whose work
    directories are under `root` (default: default_root()). Imported here, so a process serving
    only `copier` never loads libguestfs."""
    if name == "input":
        from v2v.services.input.service import InputService
        from v2v.v1 import input_pb2_grpc

        remove_dead_sockets(root, "in")  # a killed input's servers died, and left their sockets
        return InputService(root), input_pb2_grpc.add_InputServicer_to_server, "v2v.v1.Input"
    if name == "convert":
        from v2v.services.convert.service import ConvertService
        from v2v.v1 import convert_pb2_grpc

        return ConvertService(root), convert_pb2_grpc.add_ConvertServicer_to_server, "v2v.v1.Convert"
    if name == "output":
        from v2v.services.output.service import OutputService
        from v2v.v1 import output_pb2_grpc

        remove_dead_sockets(root, "out")
        return OutputService(root), output_pb2_grpc.add_OutputServicer_to_server, "v2v.v1.Output"
    if name == "copier":
        from v2v.services.copier.service import CopierService
        from v2v.v1 import copier_pb2_grpc

        return CopierService(root), copier_pb2_grpc.add_CopierServicer_to_server, "v2v.v1.Copier"
    if name == "verify":
        from v2v.services.verify.service import VerifyService
        from v2v.v1 import verify_pb2_grpc

        return VerifyService(root), verify_pb2_grpc.add_VerifyServicer_to_server, "v2v.v1.Verify"
    raise ValueError(f"unknown service {name!r} (services: {', '.join(SERVICES)}, coordinator, warm)")
