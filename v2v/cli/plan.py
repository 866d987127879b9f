"""A fleet's plan (`v2v fleet plan.yaml`, docs/fleet.md): defaults, then guests, each with its
input, output, conversion, copy and network options, read as the typed GuestJobs the
coordinator takes.

Each plan key is a field of the JobArgs the command line fills too (its input keys: the InputArgs
the input's plugin maps), so a plan means exactly what the same flags mean, through the same
builders, with no command line in between. A guest may instead be a GuestJob itself, in
protobuf's JSON form, under `job:`."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from google.protobuf import json_format

from v2v.cli.args import ACCELERATORS, ALLOCATIONS, BLOCK_DRIVERS, FORMATS, VERIFY_BOOT, JobArgs
from v2v.coordinator.pipeline import guest_name
from v2v.coordinator.scheduler import Limits
from v2v.errors import V2VError
from v2v.options import Options
from v2v.plugins import InputArgs
from v2v.units import parse_size
from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb

# plan section -> {plan key: the field it sets (of InputArgs for `input:`, of JobArgs for the others)}
SECTIONS: dict[str, dict[str, str]] = {
    "input": {"type": "kind", "files": "files", "format": "format", "uri": "uri", "transport": "transport",
              "options": "io", "password_file": "password_file"},
    "output": {"type": "output", "storage": "output_storage", "uri": "output_uri", "options": "output_options",
               "format": "output_format", "allocation": "output_alloc", "name": "output_name",
               "overwrite": "overwrite"},
    "convert": {"accel": "accel", "root": "root", "keys": "keys", "verbose": "verbose", "trace": "trace",
                "block_driver": "block_driver", "virtio_win": "virtio_win", "virt_tools_dir": "virt_tools_dir"},
    "copy": {"parallel": "parallel", "verify": "verify", "while_converting": "copy_while_converting"},
}
# top-level keys of a guest (and of defaults) that are lists of -n, -b, --mac values
NETWORK_KEYS = {"networks": "networks", "bridges": "bridges", "macs": "macs"}
# other top-level keys of a guest (and of defaults)
TOP_KEYS = {**NETWORK_KEYS, "verify_boot": "verify_boot"}
GUEST_KEYS = {"name", "priority", "job", *SECTIONS, *TOP_KEYS}
# the keys a `job:` guest may have besides it
JOB_KEYS = {"job", "name", "priority"}
LIMIT_KEYS = {"conversions", "copy_streams", "per_source_host", "memory", "appliance_memory"}
# JobArgs fields whose value is one of a fixed set
CHOICES: dict[str, typing.Mapping[str, object]] = {"output_format": FORMATS, "output_alloc": ALLOCATIONS,
                                                   "accel": ACCELERATORS, "block_driver": BLOCK_DRIVERS,
                                                   "verify_boot": VERIFY_BOOT}


@dataclass
class Plan:
    jobs: list[coordinator_pb2.GuestJob]
    limits: dict[str, Any]  # the plan's `limits:` section: used when the fleet runs embedded


class _PlanError(Exception):
    pass


def _raise(message: str) -> NoReturn:
    raise _PlanError(message)


def _names(keys: Any) -> str:
    """Keys for a message, on one line: a key that is not plain text (None, a number, one with a
    newline) as its repr."""
    return ", ".join(k if isinstance(k, str) and k.isprintable() and k else repr(k) for k in sorted(keys, key=str))


def _merge(defaults: dict[str, Any], guest: dict[str, Any]) -> dict[str, Any]:
    """The guest's keys over the defaults', one level into the sections (lists are replaced). A
    `job:` guest is whole already: defaults do not apply to it."""
    if "job" in guest:
        return dict(guest)
    merged = dict(defaults)
    for key, value in guest.items():
        if key in SECTIONS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _values(value: Any) -> list[str]:
    """A list option from a scalar, a list, or a mapping (options: {key: value} = key=value)."""
    if isinstance(value, dict):
        return [f"{k}={'on' if v is True else 'off' if v is False else v}" for k, v in value.items()]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _typed(where: str, kind: Any, value: Any) -> Any:
    """A plan value as the field's type: what argparse checked for the same flag."""
    if kind is bool:
        if not isinstance(value, bool):
            _raise(f"{where}: expected true or false, not {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _raise(f"{where}: expected a whole number, not {value!r}")
        return value
    if kind is Options:
        return Options("-io", "", _values(value))
    if kind == list[str]:
        return _values(value)
    if isinstance(value, (dict, list)):
        _raise(f"{where}: expected one value, not {value!r}")
    return str(value)


def _fields(cls: type, section: str, keys: dict[str, str], options: Any) -> dict[str, Any]:
    """The section's keys as keyword arguments of cls, each checked against its field's type
    (section "": the guest's own top-level keys)."""
    if not isinstance(options, dict):
        _raise(f"{section}: expected a mapping of options, not {options!r}")
    hints = typing.get_type_hints(cls)
    found: dict[str, Any] = {}
    for key, value in options.items():
        if key not in keys:
            _raise(f"{section}.{_names([key])}: unknown option (known: {', '.join(keys)})")
        dest, where = keys[key], f"{section}.{key}" if section else key
        found[dest] = _typed(where, hints[dest], value)
        if dest in CHOICES and found[dest] not in CHOICES[dest]:
            _raise(f"{where}: expected one of {', '.join(CHOICES[dest])}, not {value!r}")
    return found


def _job_args(guest: dict[str, Any]) -> JobArgs:
    """The guest's keys as the JobArgs the same flags would fill."""
    inp = {"kind": "disk", "files": [], **_fields(InputArgs, "input", SECTIONS["input"], guest.get("input") or {})}
    fields: dict[str, Any] = {}
    for section in ("output", "convert", "copy"):
        fields.update(_fields(JobArgs, section, SECTIONS[section], guest.get(section) or {}))
    top_keys = {k: v for k, v in TOP_KEYS.items() if k in guest}
    fields.update(_fields(JobArgs, "", top_keys, {k: guest[k] for k in top_keys}))
    return JobArgs(InputArgs(**inp), **fields)


def _guest_job(guest: dict[str, Any]) -> coordinator_pb2.GuestJob:
    if "job" in guest:
        extra = set(guest) - JOB_KEYS
        if extra:
            _raise(f"job: a GuestJob stands alone, with only name and priority beside it "
                   f"(found {_names(extra)})")
        if not isinstance(guest["job"], dict):
            _raise(f"job: expected a GuestJob in protobuf JSON form (a mapping), not {guest['job']!r}")
        job = coordinator_pb2.GuestJob()
        try:
            json_format.ParseDict(guest["job"], job)
        except json_format.ParseError as exc:
            _raise(f"job: {str(exc).split('Available Fields')[0].strip()}")  # the fields it lists: the proto's
    else:
        job = _job_args(guest).job()
    if "name" in guest:
        job.name = str(guest["name"])
    if "priority" in guest:
        job.priority = _typed("priority", int, guest["priority"])
    return job


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line, with where it is: its own text spans several (the context, the
    problem, each with its position)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{getattr(exc, 'problem', None) or exc}{where}".split())


def parse_plan(text: str, origin: str = "plan") -> Plan:
    """The plan's guests as jobs, in the plan's order; errors name the guest and the option."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise V2VError(f"{origin}: not valid YAML: {yaml_problem(exc)}", pb.ERROR_CODE_BAD_INPUT) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("guests"), list) or not doc["guests"]:
        raise V2VError(f"{origin}: expected a mapping with a non-empty `guests:` list", pb.ERROR_CODE_BAD_INPUT)
    unknown = set(doc) - {"defaults", "guests", "limits"}
    if unknown:
        raise V2VError(f"{origin}: unknown section(s) {_names(unknown)} (known: defaults, guests, limits)",
                       pb.ERROR_CODE_BAD_INPUT)
    limits = doc.get("limits") or {}
    if not isinstance(limits, dict) or set(limits) - LIMIT_KEYS:
        raise V2VError(f"{origin}: limits: known keys are {', '.join(sorted(LIMIT_KEYS))}", pb.ERROR_CODE_BAD_INPUT)
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise V2VError(f"{origin}: defaults: expected a mapping of a guest's keys, not {defaults!r}",
                       pb.ERROR_CODE_BAD_INPUT)
    jobs, names = [], set()
    for n, entry in enumerate(doc["guests"]):
        where = f"{origin}: guest {n + 1}"
        try:
            if not isinstance(entry, dict):
                _raise(f"expected a mapping, not {entry!r}")
            guest = _merge(defaults, entry)
            job_doc = guest.get("job")
            named = guest.get("name") or (job_doc.get("name") if isinstance(job_doc, dict) else None)
            where = f"{origin}: guest {named or n + 1}"
            unknown = set(guest) - GUEST_KEYS
            if unknown:
                _raise(f"unknown key(s) {_names(unknown)} (known: {', '.join(sorted(GUEST_KEYS))})")
            job = _guest_job(guest)
        except _PlanError as exc:
            raise V2VError(f"{where}: {exc}", pb.ERROR_CODE_BAD_INPUT) from None
        except V2VError as err:
            raise V2VError(f"{where}: {err.message}", err.code) from None
        name = guest_name(job)
        if name in names:
            raise V2VError(f"{where}: the name {name} is already another guest's: give each a `name:`",
                           pb.ERROR_CODE_BAD_INPUT)
        names.add(name)
        jobs.append(job)
    return Plan(jobs, limits)


def read_plan(path: Path) -> Plan:
    try:
        text = path.read_text()
    except OSError as exc:
        raise V2VError(f"{path}: {exc.strerror}", pb.ERROR_CODE_BAD_INPUT) from None
    return parse_plan(text, str(path))


def plan_limits(limits: dict[str, Any]) -> tuple[Limits, dict[str, int]]:
    """(fleet-wide Limits, the worker's capacities) from a plan's `limits:` section."""
    def size(key: str, default: int) -> int:
        return parse_size(str(limits[key])) if key in limits else default

    base = Limits()
    fleet = Limits(per_source_host=int(limits.get("per_source_host", 0)),
                   appliance_memory=size("appliance_memory", base.appliance_memory))
    capacity: dict[str, int] = {k: int(limits[k]) for k in ("conversions", "copy_streams") if k in limits}
    if "memory" in limits:
        capacity["memory"] = size("memory", 0)
    return fleet, capacity
