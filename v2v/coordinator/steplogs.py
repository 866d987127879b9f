"""Per-guest, per-step logs as JSON lines (`v2v logs GUEST [STEP]`):

    <logs root>/<guest id>/<attempt>-<step>.jsonl
        {"event": StepEvent}                                  every event of the step
        {"process": "convert-appliance.log", "line": "..."}   stderr of the processes the services ran

A process's lines go to the step that ends after they were written: the appliance's to convert,
nbdcopy's to copy, an input nbdkit's to whichever step it spoke in."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from v2v.v1 import types_pb2 as pb


class StepLogs:
    """The log files of one guest's attempt; collects its work directory's process logs as steps end."""

    def __init__(self, root: Path, gid: str, attempt: int) -> None:
        self.dir = root / gid
        self.dir.mkdir(parents=True, exist_ok=True)
        self.attempt = attempt
        self.workdir_logs: Path | None = None
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()

    def path(self, step: str) -> Path:
        return self.dir / f"{self.attempt}-{step}.jsonl"

    def _append(self, step: str, objs: list[dict[str, Any]]) -> None:
        with self._lock, open(self.path(step), "a") as f:
            for obj in objs:
                f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def event(self, ev: pb.StepEvent) -> None:
        step = ev.parent or ev.step
        self._append(step, [{"event": json_format.MessageToDict(ev, preserving_proto_field_name=True)}])
        if not ev.parent and ev.state in (pb.STEP_STATE_SUCCEEDED, pb.STEP_STATE_FAILED):
            self.collect(step)

    def collect(self, step: str) -> None:
        """Appends what the work directory's process logs gained since the last collection."""
        if self.workdir_logs is None or not self.workdir_logs.is_dir():
            return
        lines: list[dict[str, Any]] = []
        for log in sorted(self.workdir_logs.iterdir()):
            start = self._offsets.get(log.name, 0)
            try:
                with open(log, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                continue
            complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next step
            self._offsets[log.name] = start + len(complete)
            lines += [{"process": log.name, "line": line} for line in complete.decode(errors="replace").splitlines()]
        if lines:
            self._append(step, lines)


def read_logs(root: Path, gid: str, steps: list[tuple[int, str]]) -> list[tuple[int, str, dict[str, Any]]]:
    """(attempt, step, record) of a guest's logs for the given (attempt, step)s, in that order."""
    records = []
    for attempt, step in steps:
        path = root / gid / f"{attempt}-{step}.jsonl"
        if path.exists():
            records += [(attempt, step, json.loads(line)) for line in path.read_text().splitlines() if line]
    return records
