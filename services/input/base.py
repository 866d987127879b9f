"""The input plugin interface: setup -> Source + one started NBD server per disk."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack

from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


class InputPlugin(ABC):
    """One input type (`-i NAME`). `open` must register every process it starts on `stack`."""

    @abstractmethod
    def open(self, options: Message, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        """Parses the source, serves disk N on workdir.in_sock(N), returns the Source."""


_PLUGINS: dict[str, InputPlugin] = {}


def register(kind: str) -> type:
    """Class decorator: `kind` is the InputSpec oneof field the plugin handles."""

    def deco(cls: type[InputPlugin]) -> type[InputPlugin]:
        _PLUGINS[kind] = cls()
        return cls

    return deco  # type: ignore[return-value]


def plugin_for(spec: input_pb2.InputSpec) -> tuple[InputPlugin, Message]:
    kind = spec.WhichOneof("kind")
    if kind is None or kind not in _PLUGINS:
        raise V2VError(f"unknown or missing input type {kind!r}", pb.ERROR_CODE_BAD_INPUT, step="open")
    return _PLUGINS[kind], getattr(spec, kind)
