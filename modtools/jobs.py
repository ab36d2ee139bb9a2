"""Background jobs of the module store: each runs in its own process, its record persists.

A job is a folder ``<store>/jobs/<id>/`` with ``job.json`` (what to do, status, progress, result or
error) and ``log.txt`` (everything the job printed). :func:`start_job` writes the record and starts
``python -m modtools.jobs run <store> <id>`` in a new process group, so :func:`cancel_job` can stop
the job and all its children, and a crashing job cannot take the kernel or server down. The job
process reports progress through its record (every progress bar of modtools feeds it), and checks
it for a cancellation between steps. After a restart, :func:`list_jobs` shows every past job; a job
whose process is gone without a result is marked failed, with the reason.

Statuses: ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

from .allocator import tuned_environment
from .errors import JobError, NameConflictError
from .io import atomic_write_json
from .store import ModuleStore, check_name

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
_CHILDREN: dict[str, subprocess.Popen] = {}   # jobs started by this process (so they are reaped)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def job_folder(store: ModuleStore, job_id: str) -> Path:
    return store.inside(store.jobs_dir / check_name(job_id, "job id"))


def read_job(store: ModuleStore, job_id: str) -> dict:
    """The record of job ``job_id`` as stored (see :func:`job_status` for a checked one)."""
    path = job_folder(store, job_id) / "job.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise JobError(f"no job {job_id!r} in the store {str(store.root)!r}") from None
    except json.JSONDecodeError as exc:
        raise JobError(f"the record of job {job_id!r} is damaged ({exc})") from None


def update_job(store: ModuleStore, job_id: str, **changes: Any) -> dict:
    """Change fields of a job record under the store's lock; a finished job is never reopened."""
    with store.lock():
        record = read_job(store, job_id)
        if record["status"] in FINISHED and ({"status", "progress"} & set(changes)):
            return record
        record.update(changes)
        atomic_write_json(job_folder(store, job_id) / "job.json", record)
        return record


def _alive(pid: int | None, job_id: str) -> bool:
    if not pid:
        return False
    child = _CHILDREN.get(job_id)
    if child is not None:
        return child.poll() is None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return job_id in cmdline and state != "Z"


def job_status(store: ModuleStore, job_id: str) -> dict:
    """The record of a job; one whose process has ended without a result is marked failed first."""
    record = read_job(store, job_id)
    if record["status"] in ACTIVE and not _alive(record.get("pid"), job_id):
        started = record.get("pid") is not None
        if started or time.time() - record.get("created_ts", 0) > 30:
            code = _CHILDREN[job_id].returncode if job_id in _CHILDREN else None
            why = (f"the job's process ended without a result (exit code {code}); see its log" if code is not None
                   else "the job's process is gone (killed, or the kernel or machine restarted); see its log")
            record = update_job(store, job_id, status="failed", error=why, ended=_now())
    return record


def list_jobs(store: ModuleStore) -> list[dict]:
    """Every job of the store, newest first, with statuses checked."""
    out = []
    for folder in store.jobs_dir.iterdir():
        if (folder / "job.json").is_file():
            try:
                out.append(job_status(store, folder.name))
            except JobError:
                continue
    return sorted(out, key=lambda r: r.get("created_ts", 0), reverse=True)


def reserved_names(store: ModuleStore) -> dict[str, str]:
    """Module names that active jobs will write → the job id."""
    return {n: r["id"] for r in list_jobs(store) if r["status"] in ACTIVE for n in r.get("outputs", [])}


def start_job(store: ModuleStore, kind: str, request: dict, outputs: list[str] | None = None,
              title: str = "") -> str:
    """Record a job and start its process; returns the job id.

    ``kind`` names a registered job function (:data:`JOB_KINDS`); ``request`` is its JSON argument;
    ``outputs`` are the module names it will write, reserved until it ends.

    Raises:
        NameConflictError: an output name is in the store or reserved by an active job.
        JobError: an unknown kind.
    """
    if kind not in JOB_KINDS:
        raise JobError(f"unknown job kind {kind!r}; available: {', '.join(JOB_KINDS)}")
    outputs = [check_name(n) for n in (outputs or [])]
    if len(set(outputs)) != len(outputs):
        raise NameConflictError(f"a job cannot write the same module name twice: {outputs}")
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder = job_folder(store, job_id)
    with store.lock():
        taken = reserved_names(store)
        for n in outputs:
            if n in store:
                raise NameConflictError(f"the store already has a module named {n!r}; choose another name")
            if n in taken:
                raise NameConflictError(f"job {taken[n]} is already writing a module named {n!r}; "
                                        "wait for it, cancel it, or choose another name")
        folder.mkdir(parents=True)
        record = {"id": job_id, "kind": kind, "title": title or kind, "status": "queued", "created": _now(),
                  "created_ts": time.time(), "request": request, "outputs": outputs, "progress": 0.0,
                  "message": "queued", "pid": None, "result": None, "error": None}
        atomic_write_json(folder / "job.json", record)
    log = open(folder / "log.txt", "ab")
    env = {**tuned_environment(), "PYTHONUNBUFFERED": "1"}   # the allocator settings of modtools.allocator
    proc = subprocess.Popen([sys.executable, "-m", "modtools.jobs", "run", str(store.root), job_id],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=os.getcwd())
    log.close()
    _CHILDREN[job_id] = proc
    update_job(store, job_id, pid=proc.pid)
    return job_id


def cancel_job(store: ModuleStore, job_id: str, grace: float = 3.0) -> dict:
    """Cancel a job: mark it cancelled, then stop its process group (SIGTERM, then SIGKILL).

    Cancelling a finished job changes nothing and returns its record.
    """
    record = job_status(store, job_id)
    if record["status"] in FINISHED:
        return record
    record = update_job(store, job_id, status="cancelled", ended=_now(), message="cancelled")
    if record["status"] != "cancelled":   # it finished in the meantime
        return record
    pid = record.get("pid")
    if pid:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.time() + wait
            while time.time() < deadline and _alive(pid, job_id):
                time.sleep(0.05)
            if not _alive(pid, job_id):
                break
    with open(job_folder(store, job_id) / "log.txt", "a") as f:
        f.write(f"\n[{_now()}] cancelled\n")
    return read_job(store, job_id)


def wait_job(store: ModuleStore, job_id: str, timeout: float = 600.0, poll: float = 0.2) -> dict:
    """Wait until the job has finished; returns its record (raises ``TimeoutError`` after ``timeout``)."""
    deadline = time.time() + timeout
    while True:
        record = job_status(store, job_id)
        if record["status"] in FINISHED:
            return record
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} is still {record['status']} after {timeout:.0f} s")
        time.sleep(poll)


def job_log(store: ModuleStore, job_id: str, tail: int = 200) -> str:
    """The last ``tail`` lines the job printed (progress bars' carriage returns folded)."""
    path = job_folder(store, job_id) / "log.txt"
    if not path.is_file():
        return ""
    lines = [ln.rsplit("\r", 1)[-1] for ln in path.read_text(errors="replace").splitlines()]
    return "\n".join(ln for ln in lines[-tail:])


# --------------------------------------------------------------------------------------------
# Inside the job process
# --------------------------------------------------------------------------------------------

class Cancelled(Exception):
    """Raised inside a job process when its record says it was cancelled."""


class Reporter:
    """What a job function gets to report progress: ``reporter(fraction, message)``; raises
    :class:`Cancelled` when the job was cancelled. Writes at most every ``interval`` seconds."""

    def __init__(self, store: ModuleStore, job_id: str, interval: float = 0.5):
        self.store, self.job_id, self.interval = store, job_id, interval
        self._last = 0.0
        self.low, self.high = 0.0, 1.0

    def stage(self, low: float, high: float, message: str) -> None:
        """The next steps map their 0..1 progress into ``low..high`` of the job."""
        self.low, self.high = low, high
        self(0.0, message, force=True)

    def __call__(self, fraction: float, message: str | None = None, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        value = self.low + (self.high - self.low) * min(max(float(fraction), 0.0), 1.0)
        changes = {"progress": round(value, 4)}
        if message:
            changes["message"] = message
            print(f"[{_now()}] {message}", flush=True)
        record = update_job(self.store, self.job_id, **changes)
        if record["status"] == "cancelled":
            raise Cancelled()


def _hook_progress_bars(reporter: Reporter) -> None:
    """Every tqdm bar modtools opens in this process also reports to the job (the outermost one sets
    the fraction)."""
    import tqdm.auto
    import tqdm.std

    open_bars: list = []

    class ReportingTqdm(tqdm.std.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("mininterval", 1.0)
            kwargs["file"] = sys.stdout
            super().__init__(*args, **kwargs)
            open_bars.append(self)

        def update(self, n=1):
            out = super().update(n)
            if open_bars and open_bars[0] is self and self.total:
                reporter(self.n / self.total, f"{self.desc or 'step'} {self.n}/{self.total}")
            return out

        def close(self):
            if self in open_bars:
                open_bars.remove(self)
            return super().close()

    tqdm.auto.tqdm = ReportingTqdm


JOB_KINDS: dict[str, Callable[[ModuleStore, dict, Reporter], dict]] = {}


def job_kind(name: str):
    """Register a job function ``fn(store, request, reporter) -> result dict`` under ``name``."""
    def wrap(fn):
        JOB_KINDS[name] = fn
        return fn
    return wrap


@job_kind("sleep")
def _sleep_job(store: ModuleStore, request: dict, reporter: Reporter) -> dict:
    """A job that only waits (for tests and for trying the dashboard): ``{"seconds": s, "fail": bool}``."""
    seconds = float(request.get("seconds", 1.0))
    steps = max(int(seconds / 0.1), 1)
    for i in range(steps):
        time.sleep(seconds / steps)
        reporter((i + 1) / steps, f"slept {(i + 1) * seconds / steps:.1f} s")
    if request.get("fail"):
        raise ValueError(str(request.get("fail")))
    return {"slept": seconds}


def run_job(store_root: str, job_id: str) -> int:
    """The body of a job process."""
    from . import foundry  # noqa: F401  (registers the foundry's job kinds)

    store = ModuleStore(store_root)
    record = read_job(store, job_id)
    if record["status"] != "queued":
        return 0
    update_job(store, job_id, status="running", started=_now(), pid=os.getpid(), message="started")
    reporter = Reporter(store, job_id)
    _hook_progress_bars(reporter)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    print(f"[{_now()}] job {job_id}: {record['kind']} {json.dumps(record['request'])}", flush=True)
    try:
        result = JOB_KINDS[record["kind"]](store, record["request"], reporter)
    except Cancelled:
        print(f"[{_now()}] cancelled", flush=True)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded with its message
        traceback.print_exc()
        update_job(store, job_id, status="failed", ended=_now(), error=f"{type(exc).__name__}: {exc}",
                   message="failed")
        return 1
    update_job(store, job_id, status="done", ended=_now(), progress=1.0, result=result, message="done")
    print(f"[{_now()}] done: {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "run":
        print("usage: python -m modtools.jobs run STORE JOB_ID", file=sys.stderr)
        sys.exit(2)
    from modtools import jobs as _jobs   # the importable module, where the foundry registers its job kinds

    sys.exit(_jobs.run_job(sys.argv[2], sys.argv[3]))
