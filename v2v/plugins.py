"""Input and output plugins, discovered rather than listed: every module of a plugin package is
imported, and each `@INPUTS.register("ova")` it runs adds a plugin. The packages are the built-in
one (v2v.services.input, v2v.services.output) and the namespace package v2v_plugins.input
(v2v_plugins.output) that any directory on sys.path, or another distribution, adds modules to.

A plugin owns everything `-i NAME` means: its options message (a field of InputSpec's oneof, or the
generic PluginInput with no proto edit), how the command line's input arguments become that message
(InputCli, here in core so that the CLI consumes it and the services never import the CLI), its
`-io ?` lines, its location and the host its disks are read from."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.options import Options
from v2v.v1 import input_pb2, output_pb2
from v2v.v1 import types_pb2 as pb

P = TypeVar("P")

# The oneof field of InputSpec and OutputSpec that carries a plugin without a message of its own
# (PluginInput, PluginOutput: its name and a map of options).
GENERIC = "plugin"


class PluginRegistry(Generic[P]):
    """The plugins of one role, keyed by kind: the oneof field of their spec message, or the name in
    its generic `plugin` field."""

    def __init__(self, what: str, packages: Sequence[str]) -> None:
        self.what = what  # "input" or "output", for messages
        self.packages = packages  # where plugins are discovered, built-in first
        self._plugins: dict[str, P] = {}

    def register(self, kind: str) -> Callable[[type[P]], type[P]]:
        """Class decorator: the plugin handles specs whose `kind` oneof field is set (or whose generic
        field names `kind`)."""

        def deco(cls: type[P]) -> type[P]:
            if kind in self._plugins and type(self._plugins[kind]) is not cls:
                raise ValueError(f"two {self.what} plugins are called {kind}: "
                                 f"{type(self._plugins[kind]).__module__} and {cls.__module__}")
            self._plugins[kind] = cls()
            return cls

        return deco

    def discover(self) -> None:
        """Imports every module of the plugin packages (those already imported cost a dict look-up).
        Run on each use, so a module added to a package since is found."""
        for package in self.packages:
            try:
                paths = importlib.import_module(package).__path__
            except ModuleNotFoundError as exc:
                if exc.name and (package + ".").startswith(exc.name + "."):
                    continue  # no such package installed: no plugins from it
                raise
            for module in pkgutil.iter_modules(paths, package + "."):
                importlib.import_module(module.name)

    def plugins(self) -> dict[str, P]:
        """kind -> plugin, in discovery order (built-in first, each package's modules by name)."""
        self.discover()
        return dict(self._plugins)

    def lookup(self, spec: Message) -> tuple[P, Message]:
        """The plugin for a spec, and the spec's options message for it."""
        kind = spec.WhichOneof("kind")
        options: Message | None = getattr(spec, kind) if kind else None
        if isinstance(options, (input_pb2.PluginInput, output_pb2.PluginOutput)):
            kind = options.name
        plugins = self.plugins()
        if kind is None or options is None or kind not in plugins:
            raise V2VError(f"unknown or missing {self.what} type {kind!r}", pb.ERROR_CODE_BAD_INPUT)
        return plugins[kind], options

    @staticmethod
    def fill(spec: Message, kind: str, options: Message) -> None:
        """Puts a plugin's options message in the spec's oneof: its own field, or the generic one."""
        fields = {f.name for f in spec.DESCRIPTOR.oneofs_by_name["kind"].fields}
        field_name = kind if kind in fields else GENERIC
        target = getattr(spec, field_name)
        target.SetInParent()  # an empty options message (-o null) still says which plugin
        target.CopyFrom(options)
        if field_name == GENERIC:
            target.name = kind


@dataclass
class InputArgs:
    """The command line's input arguments (-i, -ic, -if, -it, -ip, -io, the files), or a fleet
    plan's `input:` keys, before any plugin read them."""

    kind: str  # -i
    files: list[str]  # the positional arguments
    format: str = ""  # -if
    uri: str = ""  # -ic
    transport: str = ""  # -it
    password_file: str = ""  # -ip
    io: Options = field(default_factory=lambda: Options("-io", "", []))  # -io

    def one(self) -> str:
        if len(self.files) != 1:
            raise V2VError(f"-i {self.kind} takes one argument, not {len(self.files)}", pb.ERROR_CODE_BAD_INPUT,
                           step="open")
        return self.files[0]


@dataclass(frozen=True)
class InputCli:
    """How an input plugin appears on the command line. Several plugins may share one `-i NAME`:
    the one without `picks` is the plain input, the others are variants chosen by -it, -ic or -io."""

    name: str  # -i NAME
    build: Callable[[InputArgs], Message]  # the arguments as the plugin's options message
    files: str = ""  # what the positional arguments are, for --help
    io: Sequence[tuple[str, str]] = ()  # the -io options it takes: (KEY[=VALUE], what it does), for -io ?
    transports: Sequence[str] = ()  # the -it values it takes
    picks: Callable[[InputArgs], bool] | None = None  # a variant: whether these arguments are its


@dataclass
class OutputArgs:
    """The command line's output arguments (-o, -os, -oc, -oo), or a fleet plan's `output:` keys."""

    kind: str  # -o
    storage: str  # -os (made absolute when OutputCli.directory)
    uri: str = ""  # -oc
    oo: Options = field(default_factory=lambda: Options("-oo", "", []))  # -oo

    def directory(self) -> str:
        if not self.storage:
            raise V2VError(f"-o {self.kind}: give the output directory with -os DIR", pb.ERROR_CODE_BAD_INPUT,
                           step="check")
        return self.storage


@dataclass(frozen=True)
class OutputCli:
    """How an output plugin appears on the command line."""

    names: Sequence[str]  # -o NAME, then its aliases
    build: Callable[[OutputArgs], Message]  # the arguments as the plugin's options message
    oo: Sequence[tuple[str, str]] = ()  # the -oo options it takes: (KEY[=VALUE], what it does), for -oo ?
    directory: bool = False  # -os is a directory on this machine (else: a pool name, or nothing)
