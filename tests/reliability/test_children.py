"""Matrix item 8: a child's parent-death signal fires when the thread that forked it ends, not the
process, and preexec_fn is unsafe with threads. Children are forked by one long-lived thread, with
setpriv setting the signal: a disk served from a short-lived thread stays served, and a service
killed outright takes its children with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from v2v.process import Process


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_child_started_from_a_thread_that_ends_keeps_running(tmp_path):
    started: list[Process] = []
    worker = threading.Thread(target=lambda: started.append(Process(["sleep", "300"], tmp_path / "log").start()))
    worker.start()
    worker.join()
    with started[0] as child:
        time.sleep(1)  # the forking thread's death signal, were it ours, has fired by now
        assert child.running() and alive(child.pid)
    assert not alive(child.pid)


def test_a_killed_service_takes_its_children(tmp_path):
    script = (f"import sys, time; sys.path.insert(0, {str(Path.cwd())!r}); from pathlib import Path; "
              "from v2v.process import Process; "
              f"p = Process(['sleep', '300'], Path({str(tmp_path / 'log')!r})).start(); "
              "print(p.pid, flush=True); time.sleep(300)")
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(service.stdout.readline())  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":
            assert time.monotonic() < deadline, "setpriv never became sleep"  # it has set the signal then
            time.sleep(0.01)
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, "the child outlived its killed service"
            time.sleep(0.1)
    finally:
        service.kill()
        service.wait()
