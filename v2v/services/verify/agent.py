"""qemu-guest-agent over the virtio-serial port org.qemu.guest_agent.0 (qemu serves its Unix
socket): guest-sync first, since a port the agent has not opened yet swallows or queues what is
sent, then ping, network interfaces and OS info."""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from typing import Any

from v2v.v1 import verify_pb2

PORT = "org.qemu.guest_agent.0"


class GuestAgent:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        assert self._sock is not None
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        return self._reply(lambda doc: True, timeout)

    def _reply(self, wanted: Any, timeout: float) -> Any:
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    doc = json.loads(line.strip(b"\xff"))
                except ValueError:
                    continue
                if isinstance(doc, dict) and "return" in doc and wanted(doc):
                    return doc["return"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"guest agent: no answer within {timeout:.0f} s")
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("guest agent: qemu closed the socket")
            self._buf += chunk

    def answers(self, timeout: float = 2.0) -> bool:
        """Whether the agent is up now (guest-sync with a fresh id, then guest-ping)."""
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(str(self.path))
            token = random.randrange(1, 1 << 31)
            self._sock.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": token}}).encode() + b"\n")
            self._reply(lambda doc: doc.get("return") == token, timeout)
            self._call("guest-ping", timeout=timeout)
            return True
        except (OSError, TimeoutError, ConnectionError):
            self.close()
            return False

    def observe(self) -> verify_pb2.Observed:
        """NICs and OS as the agent reports them (an agent has no view of mounts or units here)."""
        obs = verify_pb2.Observed()
        for n in self._call("guest-network-get-interfaces"):
            if n.get("name") == "lo":
                continue
            obs.nics.add(name=n.get("name", ""), mac=str(n.get("hardware-address", "")).lower(),
                         addresses=[f"{a['ip-address']}/{a['prefix']}" for a in n.get("ip-addresses", [])])
        info = self._call("guest-get-osinfo")
        obs.os.CopyFrom(verify_pb2.OsInfo(id=info.get("id", ""), name=info.get("pretty-name", ""),
                                          version=info.get("version-id", ""), kernel=info.get("kernel-release", "")))
        try:
            obs.os.hostname = self._call("guest-get-host-name").get("host-name", "")
        except (OSError, TimeoutError, ConnectionError):
            pass
        return obs
