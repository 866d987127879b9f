"""KEY[=VALUE] options (-oo, -io), consumed by the builder that knows them; any left over is an
error, so a typo never passes silently."""

from __future__ import annotations

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb


class Options:
    def __init__(self, flag: str, owner: str, raw: list[str]) -> None:
        self.flag_name = flag  # "-oo" or "-io", for messages
        self.owner = owner  # "-o qemu", for messages
        self.items: list[tuple[str, str | None]] = []
        for item in raw:
            key, eq, value = item.partition("=")
            self.items.append((key, value if eq else None))

    def _take(self, key: str) -> list[str | None]:
        found = [v for k, v in self.items if k == key]
        self.items = [(k, v) for k, v in self.items if k != key]
        return found

    def given(self, key: str) -> bool:
        """Whether KEY is among the options, left for the builder that takes it: which plugin takes
        them may depend on it (-io vpx-server= makes -i libvirt read VMware datastores)."""
        return any(k == key for k, _ in self.items)

    def flag(self, key: str) -> bool:
        found = self._take(key)
        if any(v not in (None, "true", "yes", "1") for v in found):
            raise V2VError(f"{self.flag_name} {key} takes no value (or true)", pb.ERROR_CODE_BAD_INPUT)
        return bool(found)

    def switch(self, key: str, default: bool) -> bool:
        """KEY=on|off (also true/false, yes/no, 1/0); the default when not given."""
        found = self._take(key)
        if not found:
            return default
        value = (found[-1] or "").lower()
        if value in ("on", "true", "yes", "1"):
            return True
        if value in ("off", "false", "no", "0"):
            return False
        raise V2VError(f"{self.flag_name} {key}={value}: expected on or off", pb.ERROR_CODE_BAD_INPUT)

    def values(self, key: str) -> list[str]:
        found = self._take(key)
        if any(v is None or v == "" for v in found):
            raise V2VError(f"{self.flag_name} {key}=VALUE needs a value", pb.ERROR_CODE_BAD_INPUT)
        return [v for v in found if v is not None]

    def value(self, key: str) -> str:
        found = self.values(key)
        return found[-1] if found else ""

    def done(self) -> None:
        if self.items:
            raise V2VError(f"{self.owner}: unknown {self.flag_name} option(s): {', '.join(k for k, _ in self.items)}",
                           pb.ERROR_CODE_BAD_INPUT)
