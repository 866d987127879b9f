"""Registries of input and output plugins, keyed by the oneof field of their spec message:
adding `-i ova` or `-o kubevirt` is a new module with `@INPUTS.register("ova")` (plus its
options message in the proto), nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

P = TypeVar("P")


class PluginRegistry(Generic[P]):
    def __init__(self, what: str) -> None:
        self.what = what  # "input" or "output", for messages
        self._plugins: dict[str, P] = {}

    def register(self, kind: str) -> Callable[[type[P]], type[P]]:
        """Class decorator: the plugin handles specs whose `kind` oneof field is set."""

        def deco(cls: type[P]) -> type[P]:
            self._plugins[kind] = cls()
            return cls

        return deco

    def lookup(self, spec: Message) -> tuple[P, Message]:
        """The plugin for a spec, and the spec's options message for it."""
        kind = spec.WhichOneof("kind")
        if kind is None or kind not in self._plugins:
            raise V2VError(f"unknown or missing {self.what} type {kind!r}", pb.ERROR_CODE_BAD_INPUT)
        return self._plugins[kind], getattr(spec, kind)
