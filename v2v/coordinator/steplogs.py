"""Per-guest, per-step logs as JSON lines (`v2v logs GUEST [STEP]`, the Coordinator's Logs):

    <logs root>/<guest id>/<attempt>-<step>.jsonl
        {"event": StepEvent}                                  every event of the step
        {"process": "convert-appliance.log", "line": "..."}   stderr of the processes the services ran

The processes' lines come from the guest's worker: its input service's ReadLogs reads the work
directory's logs/ (every phase service of a worker writes there), so a worker on another host
sends them as well as one in this process. A process's lines go to the step that ends after they
were written: the appliance's to convert, nbdcopy's to copy, an input nbdkit's to whichever step it
spoke in."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from v2v.v1 import coordinator_pb2, input_pb2
from v2v.v1 import types_pb2 as pb

# What a guest's work directory's process logs gained after the offsets (its worker's ReadLogs).
LogReader = Callable[[Mapping[str, int]], input_pb2.ReadLogsResponse]


class StepLogs:
    """The log files of one guest's attempt; collects its work directory's process logs as steps end."""

    def __init__(self, root: Path, gid: str, attempt: int) -> None:
        self.dir = root / gid
        self.dir.mkdir(parents=True, exist_ok=True)
        self.attempt = attempt
        self.reader: LogReader | None = None  # set once the guest has a work directory
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()
        self._collecting = threading.Lock()

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
        if self.reader is None:
            return
        with self._collecting:
            lines: list[dict[str, Any]] = []
            while True:
                gained = self.reader(self._offsets)
                for log in gained.logs:
                    self._offsets[log.name] = log.offset
                    lines += [{"process": log.name, "line": line} for line in log.lines]
                if not gained.more:
                    break
            if lines:
                self._append(step, lines)


def log_records(root: Path, gid: str, name: str, steps: list[tuple[int, str]],
                offsets: dict[tuple[int, str], int]) -> list[coordinator_pb2.LogRecord]:
    """The records the logs of guest `gid` (named `name`) gained for the given (attempt, step)s, in
    that order, after `offsets` (bytes read of each, advanced here): complete lines only."""
    records = []
    for attempt, step in steps:
        path = root / gid / f"{attempt}-{step}.jsonl"
        start = offsets.get((attempt, step), 0)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            continue
        complete = data[:data.rfind(b"\n") + 1]  # a record still being written comes next time
        offsets[(attempt, step)] = start + len(complete)
        for line in complete.decode(errors="replace").splitlines():
            obj = json.loads(line)
            rec = coordinator_pb2.LogRecord(id=gid, guest=name, attempt=attempt, step=step)
            if "event" in obj:
                json_format.ParseDict(obj["event"], rec.event, ignore_unknown_fields=True)
            else:
                rec.process.process, rec.process.line = obj["process"], obj["line"]
            records.append(rec)
    return records
