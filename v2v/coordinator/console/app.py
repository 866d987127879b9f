"""The console's HTTP routes: the two pages and their files, the fleet's rows as JSON, their changes
as server-sent events numbered by the event log's sequence numbers, a guest's steps and logs, and
the actions (cancel, retry, submit a plan) as the coordinator's own calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from v2v.coordinator.console.board import FleetBoard
from v2v.coordinator.state import StepRecord
from v2v.coordinator.steplogs import log_records
from v2v.coordinator.view import logged_steps
from v2v.errors import V2VError
from v2v.steps import Step
from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from v2v.coordinator.service import CoordinatorService

STATIC = Path(__file__).with_name("static")
ACTION_HEADER = "x-v2v-console"  # a cross-site form cannot set it: what keeps other sites' pages from acting
KEEPALIVE = 15.0  # seconds between comments on a quiet stream, so proxies and browsers keep it open
MIN_INTERVAL = 0.1  # seconds between two messages of one stream: a copying fleet's progress, batched
PROCESS_TAIL = 400  # lines of each process log a guest's page shows (an appliance log has thousands)
ReadPlan = Callable[[str], list[coordinator_pb2.GuestJob]]

_HTTP_STATUS = {pb.ERROR_CODE_BAD_INPUT: 400, pb.ERROR_CODE_NOT_FOUND: 404, pb.ERROR_CODE_CANCELLED: 409}


class Wakeup:
    """Wakes the streams of one event loop when the board changed (rung from the board's thread).
    A stream notes `rung` before it reads the board, and its wait returns at once if a ring came
    since: none is lost while the stream was sending."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.rung = 0
        self._changed = asyncio.Event()

    def ring(self) -> None:
        self.loop.call_soon_threadsafe(self._ring)

    def _ring(self) -> None:
        self.rung += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seen: int, timeout: float) -> bool:
        """False if nothing rang after `seen` within `timeout` seconds."""
        if self.rung != seen:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _sse(seq: int, data: dict[str, Any]) -> str:
    return f"id: {seq}\nevent: rows\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _after(request: Request) -> int:
    """Where a stream starts: the browser's Last-Event-ID when it reconnects, else ?after=."""
    text = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    return int(text) if text.isdigit() else 0


def _step_dict(s: StepRecord) -> dict[str, Any]:
    return {"attempt": s.attempt, "step": s.step, "parent": s.parent, "disk": s.disk, "state": s.state,
            "started": s.started, "ended": s.ended, "duration": s.duration, "error": s.error}


def console_app(service: CoordinatorService, board: FleetBoard, read_plan: ReadPlan | None = None,
                read_only: bool = False) -> Starlette:
    """The routes over `service` and its `board`; `read_plan` turns a plan file's text into jobs
    (the CLI's plan reader; None: no plan submission); `read_only`: no actions, refused (403)."""
    wakeup: list[Wakeup] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        wakeup.append(Wakeup(asyncio.get_running_loop()))
        board.listen(wakeup[0].ring)
        yield

    def page(name: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            return FileResponse(STATIC / name, headers={"cache-control": "no-store"})
        return endpoint

    def fleet(request: Request) -> Response:
        seq, rows = board.changed_since(0)
        return JSONResponse({"seq": seq, "rows": rows, "summary": board.summary(), "read_only": read_only,
                             "can_submit": read_plan is not None and not read_only})

    async def events(request: Request) -> Response:
        guest = request.query_params.get("guest", "")

        async def stream() -> AsyncIterator[str]:
            sent = _after(request)
            yield "retry: 2000\n\n"
            while not board.stopped:  # a stopping console ends its streams, rather than have them cut
                rung = wakeup[0].rung
                seq, rows = board.changed_since(sent, guest)
                if rows or seq != sent:
                    yield _sse(seq, {"rows": rows, **({} if guest else {"summary": board.summary()})})
                    sent = seq
                    await asyncio.sleep(MIN_INTERVAL)
                if not await wakeup[0].wait(rung, KEEPALIVE):
                    yield ": keepalive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    def guest(request: Request) -> Response:
        gid = request.path_params["gid"]
        row = board.row(gid)
        if row is None:
            return JSONResponse({"error": f"no guest with id {gid!r}"}, status_code=404)
        steps = service.state.steps(gid)
        boot: dict[str, Any] | None = None
        if any(s.step == Step.VERIFY and not s.parent for s in steps):
            records = log_records(service.logs_root, gid, row["name"], logged_steps(steps, Step.VERIFY), {})
            notes = [r.event for r in records if r.HasField("event") and r.event.step == Step.VERIFY
                     and r.event.state == pb.STEP_STATE_NOTE]
            error = row["error"] or {}
            boot = {"notes": [{"message": n.message, "warning": n.severity >= pb.SEVERITY_WARNING} for n in notes],
                    "console_tail": error.get("detail", "").splitlines() if error.get("code") == "BOOT_FAILED"
                    else []}
        return JSONResponse({"row": row, "steps": [_step_dict(s) for s in steps], "boot": boot,
                             "read_only": read_only})

    def logs(request: Request) -> Response:
        """The guest's step logs, step by step: its notes and warnings, and each process's last lines."""
        gid = request.path_params["gid"]
        row = board.row(gid)
        if row is None:
            return JSONResponse({"error": f"no guest with id {gid!r}"}, status_code=404)
        out: list[dict[str, Any]] = []
        for attempt, step in logged_steps(service.state.steps(gid)):
            processes: dict[str, list[str]] = {}
            notes = []
            for r in log_records(service.logs_root, gid, row["name"], [(attempt, step)], {}):
                if r.HasField("process"):
                    processes.setdefault(r.process.process, []).append(r.process.line)
                elif r.event.state == pb.STEP_STATE_NOTE:
                    notes.append({"step": r.event.step, "message": r.event.message,
                                  "warning": r.event.severity >= pb.SEVERITY_WARNING})
            out.append({"attempt": attempt, "step": step, "notes": notes,
                        "processes": [{"name": n, "lines": lines[-PROCESS_TAIL:],
                                       "cut": max(len(lines) - PROCESS_TAIL, 0)} for n, lines in processes.items()]})
        return JSONResponse({"logs": out})

    def action(act: Callable[[Request, Any], Any]) -> Callable[[Request], Any]:
        """An action's endpoint: refused when read-only or asked without the console's header;
        the coordinator's error, if any, as the answer."""
        async def endpoint(request: Request) -> Response:
            if read_only:
                return JSONResponse({"error": "this console is read-only"}, status_code=403)
            if request.headers.get(ACTION_HEADER) != "1":
                return JSONResponse({"error": f"actions need the {ACTION_HEADER} header"}, status_code=403)
            body = await request.body()
            try:
                return JSONResponse(await asyncio.to_thread(act, request, body))
            except V2VError as err:
                return JSONResponse({"error": err.one_line()}, status_code=_HTTP_STATUS.get(err.code, 409))
            except ValueError as exc:  # a body that is not the JSON asked for
                return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        return endpoint

    def cancel(request: Request, body: bytes) -> dict[str, Any]:
        service.cancel(request.path_params["gid"])
        return {"cancelled": request.path_params["gid"]}

    def retry(request: Request, body: bytes) -> dict[str, Any]:
        asked = json.loads(body or b"{}")
        st = service.retry(request.path_params["gid"], str(asked.get("from_step", "")))
        return {"retried": st.id, "attempt": st.attempt}

    def submit(request: Request, body: bytes) -> dict[str, Any]:
        if read_plan is None:
            raise V2VError("this console takes no plans", pb.ERROR_CODE_BAD_INPUT)
        return {"submitted": service.submit(read_plan(body.decode(errors="replace")))}

    return Starlette(lifespan=lifespan, routes=[
        Route("/", page("fleet.html")),
        Route("/guest/{gid}", page("guest.html")),
        Mount("/static", StaticFiles(directory=STATIC)),
        Route("/api/fleet", fleet),
        Route("/api/events", events),
        Route("/api/guests/{gid}", guest),
        Route("/api/guests/{gid}/logs", logs),
        Route("/api/guests/{gid}/cancel", action(cancel), methods=["POST"]),
        Route("/api/guests/{gid}/retry", action(retry), methods=["POST"]),
        Route("/api/plan", action(submit), methods=["POST"]),
    ])
