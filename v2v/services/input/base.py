"""The input plugin interface: setup -> Source + one started NBD server per disk; and what the rest
of the system asks of an input (how the command line reaches it, what names a guest before it is
opened, the host its disks are read from), so that `-i foo` is one module (docs/inputs.md)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import ExitStack
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import urlsplit

from google.protobuf.message import Message

from v2v.plugins import InputCli, PluginRegistry
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

Options = TypeVar("Options", bound=Message)  # the input's own options message (input_pb2.XenSshInput ...)


class InputPlugin(ABC, Generic[Options]):
    """One input type (`-i NAME`). `open` must register every process it starts on `stack`."""

    cli: ClassVar[InputCli | None] = None  # how the command line and fleet plans reach it; None: the API only

    @abstractmethod
    def location(self, options: Options) -> str:
        """What names the guest before its metadata is read (a file, URI or libvirt domain): the
        guest's default name and what its events say it is."""

    def source_host(self, options: Options) -> str:
        """The host the disks are read from: the resource the scheduler's per-source-host limit protects."""
        return LOCAL_HOST

    @abstractmethod
    def open(self, options: Options, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        """Parses the source, serves disk N on workdir.in_sock(N), returns the Source."""


class InPlaceInput(InputPlugin[Options]):
    """An input whose disks can also be served writable with no overlay (OpenRequest.in_place,
    `v2v --in-place`): what the conversion writes lands in the source disks themselves. Inputs that
    cannot write where their disks lie (inside an OVA, over ssh or https) do not derive from it.
    Such an input implements `open_disks` once, for both ways."""

    @abstractmethod
    def open_disks(self, options: Options, workdir: WorkDir, stack: ExitStack, in_place: bool) -> pb.Source:
        """As `open`; with `in_place`, disk N is served straight from the source, writable."""

    def open(self, options: Options, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        return self.open_disks(options, workdir, stack, in_place=False)

    def open_in_place(self, options: Options, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        return self.open_disks(options, workdir, stack, in_place=True)


LOCAL_HOST = "localhost"


def host_of(url: str) -> str:
    return urlsplit(url).hostname or LOCAL_HOST


def absolute(path: str) -> str:
    """A path the user named, absolute: the services may run with another working directory."""
    return os.path.abspath(path) if path else ""


# Any: which options message a plugin gets is known only at run time, from the spec's `kind`.
INPUTS: PluginRegistry[InputPlugin[Any]] = PluginRegistry("input", ("v2v.services.input", "v2v_plugins.input"))
