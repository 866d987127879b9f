"""Guest operating systems the convert service knows, each a module that registers its
conversion with `@register("linux")` (the libguestfs inspection type it handles); `conversion()`
finds them in this package, so adding one is adding its file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import guestfs

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.v1 import convert_pb2
from v2v.v1 import types_pb2 as pb


@dataclass
class Converted:
    caps: pb.GuestCaps
    macs: list[str]  # each target NIC's MAC, in the source's order
    static_ips: list[pb.StaticIp]  # what the guest will set at boot: --mac's and what was kept
    names: list[str] = field(default_factory=list)  # each NIC's name in the guest, as kept ("" = not known)


Conversion = Callable[[guestfs.GuestFS, pb.Inspection, convert_pb2.ConvertRequest, StepReporter, list[str]], Converted]
_CONVERSIONS: dict[str, Conversion] = {}


def register(os_type: str) -> Callable[[Conversion], Conversion]:
    def deco(fn: Conversion) -> Conversion:
        _CONVERSIONS[os_type] = fn
        return fn

    return deco


def _discover() -> None:
    package = importlib.import_module(__package__ or "v2v.services.convert")
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{mod.name}")


def conversion(insp: pb.Inspection) -> Conversion:
    if not _CONVERSIONS:
        _discover()
    if insp.type not in _CONVERSIONS:
        raise V2VError(f"converting {insp.type or 'unknown'} guests ({insp.product_name or insp.distro}) is not "
                       f"supported: v2v converts {' and '.join(sorted(_CONVERSIONS))} guests",
                       pb.ERROR_CODE_UNSUPPORTED, step="convert")
    return _CONVERSIONS[insp.type]
