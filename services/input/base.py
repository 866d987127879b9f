"""The input plugin interface: setup -> Source + one started NBD server per disk."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack

from google.protobuf.message import Message

from v2v.plugins import PluginRegistry
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


class InputPlugin(ABC):
    """One input type (`-i NAME`). `open` must register every process it starts on `stack`."""

    @abstractmethod
    def open(self, options: Message, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        """Parses the source, serves disk N on workdir.in_sock(N), returns the Source."""


INPUTS: PluginRegistry[InputPlugin] = PluginRegistry("input")
