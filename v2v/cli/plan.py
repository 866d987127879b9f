"""A fleet's plan (`v2v fleet plan.yaml`, docs/fleet.md): defaults, then guests, each with its
input, output, conversion, copy and network options, read as the typed GuestJobs the
coordinator takes.

Each guest's options become the command line `v2v` would take for it, parsed by the CLI's own
parser and builders: a plan means exactly what the same flags mean, and there is no second
parser of input or output options to drift from the first."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from v2v.cli.args import build_job, conversion_parser
from v2v.coordinator.pipeline import guest_name
from v2v.coordinator.scheduler import Limits
from v2v.errors import V2VError
from v2v.units import parse_size
from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb

# plan section -> {plan key: the CLI option's argparse dest}
SECTIONS: dict[str, dict[str, str]] = {
    "input": {"type": "input", "files": "files", "format": "input_format", "uri": "input_uri",
              "transport": "input_transport", "options": "input_options", "password_file": "input_password"},
    "output": {"type": "output", "storage": "output_storage", "uri": "output_uri", "options": "output_options",
               "format": "output_format", "allocation": "output_alloc", "name": "output_name",
               "overwrite": "overwrite"},
    "convert": {"accel": "accel", "root": "root", "verbose": "verbose", "trace": "trace"},
    "copy": {"parallel": "parallel", "verify": "verify", "while_converting": "copy_while_converting"},
}
# top-level keys of a guest (and of defaults) that are lists of -n, -b, --mac values
NETWORK_KEYS = {"networks": "networks", "bridges": "bridges", "macs": "macs"}
GUEST_KEYS = {"name", "priority", *SECTIONS, *NETWORK_KEYS}
LIMIT_KEYS = {"conversions", "copy_streams", "per_source_host", "memory", "appliance_memory"}


@dataclass
class Plan:
    jobs: list[coordinator_pb2.GuestJob]
    limits: dict[str, Any]  # the plan's `limits:` section: used when the fleet runs embedded


class _PlanError(Exception):
    pass


def _raise(message: str) -> NoReturn:
    raise _PlanError(message)


def _merge(defaults: dict[str, Any], guest: dict[str, Any]) -> dict[str, Any]:
    """The guest's keys over the defaults', one level into the sections (lists are replaced)."""
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


def _argv(guest: dict[str, Any], actions: dict[str, argparse.Action]) -> list[str]:
    """The command line the guest's options stand for."""
    argv: list[str] = []
    files: list[str] = []

    def add(dest: str, value: Any, where: str) -> None:
        nonlocal files
        if dest == "files":
            files = _values(value)
            return
        action = actions[dest]
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                _raise(f"{where}: expected true or false, not {value!r}")
            argv.extend([flag] if value else [])
        elif isinstance(action, argparse._AppendAction):
            for v in _values(value):
                argv.extend([flag, v])
        else:
            argv.extend([flag, str(value)])

    for section, keys in SECTIONS.items():
        options = guest.get(section) or {}
        if not isinstance(options, dict):
            _raise(f"{section}: expected a mapping of options, not {options!r}")
        for key, value in options.items():
            if key not in keys:
                _raise(f"{section}.{key}: unknown option (known: {', '.join(keys)})")
            add(keys[key], value, f"{section}.{key}")
    for key, dest in NETWORK_KEYS.items():
        if key in guest:
            add(dest, guest[key], key)
    return [*argv, *files]


def parse_plan(text: str, origin: str = "plan") -> Plan:
    """The plan's guests as jobs, in the plan's order; errors name the guest and the option."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise V2VError(f"{origin}: not valid YAML: {exc}", pb.ERROR_CODE_BAD_INPUT) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("guests"), list) or not doc["guests"]:
        raise V2VError(f"{origin}: expected a mapping with a non-empty `guests:` list", pb.ERROR_CODE_BAD_INPUT)
    unknown = set(doc) - {"defaults", "guests", "limits"}
    if unknown:
        raise V2VError(f"{origin}: unknown section(s) {', '.join(sorted(unknown))} (known: defaults, guests, limits)",
                       pb.ERROR_CODE_BAD_INPUT)
    limits = doc.get("limits") or {}
    if not isinstance(limits, dict) or set(limits) - LIMIT_KEYS:
        raise V2VError(f"{origin}: limits: known keys are {', '.join(sorted(LIMIT_KEYS))}", pb.ERROR_CODE_BAD_INPUT)
    defaults = doc.get("defaults") or {}
    parser = conversion_parser()
    parser.error = _raise  # type: ignore[method-assign]
    actions = {a.dest: a for a in parser._actions}
    jobs, names = [], set()
    for n, entry in enumerate(doc["guests"]):
        where = f"{origin}: guest {n + 1}"
        try:
            if not isinstance(entry, dict):
                _raise(f"expected a mapping, not {entry!r}")
            guest = _merge(defaults, entry)
            where = f"{origin}: guest {guest.get('name') or n + 1}"
            unknown = set(guest) - GUEST_KEYS
            if unknown:
                _raise(f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(GUEST_KEYS))})")
            job = build_job(parser.parse_intermixed_args(_argv(guest, actions)))
            job.name = str(guest.get("name", ""))
            job.priority = int(guest.get("priority", 0))
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
