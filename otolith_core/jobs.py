"""Long work as background jobs: work that outlives a page, a closed tab and a restarted dashboard.

Two kinds of job, each defined once below by its request: an **extraction** (one ``otolith extract``
process: one encoder's embeddings of a data set into the cache) and a **comparison** (one ``otolith
compare-job`` process: every chosen encoder and head cross-validated on shared folds, the result stored
in the cache's result store under its key). The dashboard starts them detached (their own session,
output to a log file), so widget changes, page switches and dashboard restarts never reach them; an
extraction typed in a terminal records itself too. Every job lives under the cache folder::

    jobs/<job id>/job.json        its kind and request, its pid, who started it
                  progress.json   phase, things done and to do (images, photos, folds), rate, ETA (rewritten often)
                  outcome.json    how it ended: finished, failed (with the reason) or cancelled
                  cancel          present when a cancel was asked for
                  log.txt         what it printed

One job per request: starting a job that is running joins it. Cancelling ends it at its next step (a
batch, a fold); finished batches stay in the cache, as they do when a job is killed. A job whose
process is gone without an outcome (killed, out of memory) reads as failed, with its log tail.

Nothing here imports torch or scikit-learn, and reading job states reads a few small files.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator

from .launcher import spawn, start_launcher

STATES = ("starting", "running", "finished", "failed", "cancelled")
ACTIVE_STATES = ("starting", "running")
START_GRACE_SECONDS = 60.0  # a launched process that has not written its own record yet is still starting
LOG_TAIL_LINES = 20
LOG_EVERY_SECONDS = 10.0
# phases with a count of things done: their unit, and how a running job's line starts
COUNTED_PHASES = {"downloading": ("photos", "downloading photos: "), "extracting": ("images", ""),
                  "cross-validating": ("folds", "cross-validating: ")}


class Cancelled(BaseException):
    """Raised inside a job's process when a cancel arrives (a BaseException, like KeyboardInterrupt, so no
    ``except Exception`` on the way turns it into an ordinary error)."""


def _python_cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "otolith_core.cli", *arguments]


@dataclass(frozen=True)
class ExtractionRequest:
    """What an extraction job extracts. Its ``id`` names the job: the same request is the same job."""

    kind: ClassVar[str] = "extraction"
    preparing: ClassVar[str] = "preparing (reading files, loading the encoder)…"

    data: str  # folder or manifest, as an absolute path
    encoder: str  # encoder name as given (registry name, ad hoc model)
    precision: str = "auto"
    device: str = "auto"
    batch_size: int | None = None
    weights_dir: str | None = None
    clahe_clip_limit: float | None = None  # a `clahe` variant's parameters (None: the defaults)
    clahe_kernel: float | None = None
    columns: dict[str, str | None] | None = None  # a manifest's column mapping (data.ManifestColumns); None: native
    shards: int | None = None  # in this many shards (otolith_core.shards), run by ``executor``; None: one process
    executor: str = "local"  # where the shards run: local, slurm, ray (otolith_core.cluster)
    cluster_config: str | None = None  # the cluster's settings (TOML)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", str(Path(self.data).expanduser().resolve()))
        if self.columns is not None:
            object.__setattr__(self, "columns", dict(self.columns))

    @property
    def id(self) -> str:
        fields = {"data": self.data, "encoder": self.encoder, "precision": self.precision}
        for name in ("clahe_clip_limit", "clahe_kernel", "columns", "shards"):  # only when set: earlier jobs keep
            if getattr(self, name) is not None:                                  # their ids
                fields[name] = getattr(self, name)
        if self.shards:
            fields.update(executor=self.executor, cluster_config=self.cluster_config)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]

    def same_work(self, other: "ExtractionRequest") -> bool:
        """Whether ``other`` extracts the same images with the same encoder (wherever it runs)."""
        return (self.data, self.encoder, self.precision, self.columns, self.clahe_clip_limit, self.clahe_kernel) == \
            (other.data, other.encoder, other.precision, other.columns, other.clahe_clip_limit, other.clahe_kernel)

    @property
    def title(self) -> str:
        """What the job does, as its card and log name it."""
        return f"extracting {self.encoder} for {self.data}" + self._where()

    def label(self) -> str:
        """The job's name on a card (markdown)."""
        return f"**{self.encoder}** ({Path(self.data).name})" + self._where()

    def _where(self) -> str:
        return f" in {self.shards} shards ({self.executor})" if self.shards else ""

    def command(self, cache_dir: str | Path) -> list[str]:
        """The ``otolith extract`` command line that does this job."""
        command = _python_cli("extract", "--data", self.data, "--model", self.encoder,
                              "--cache-dir", str(Path(cache_dir).resolve()), "--precision", self.precision,
                              "--device", self.device, "--job-id", self.id)
        if self.batch_size:
            command += ["--batch-size", str(self.batch_size)]
        if self.weights_dir:
            command += ["--weights-dir", self.weights_dir]
        if self.clahe_clip_limit is not None:
            command += ["--clahe-clip-limit", repr(float(self.clahe_clip_limit))]
        if self.clahe_kernel is not None:
            command += ["--clahe-kernel", repr(float(self.clahe_kernel))]
        for field_name, value in (self.columns or {}).items():
            if value is not None:
                command += [f"--{field_name.replace('_', '-')}-column" if field_name != "box_format" else "--box-format",
                            value]
        if self.shards:
            command += ["--shards", str(self.shards), "--executor", self.executor]
            if self.cluster_config:
                command += ["--cluster-config", self.cluster_config]
        return command

    def finished_text(self, outcome: dict) -> str:
        if outcome.get("submitted") is not None:
            return (f"submitted: {outcome['submitted']} images in {self.shards} shards to {self.executor}; "
                    "`otolith merge` folds them into the cache when they end")
        unusable = f", {outcome['failed']} could not be used" if outcome.get("failed") else ""
        embedded, extracted = outcome.get("embedded"), outcome.get("extracted")
        if embedded is not None and not extracted:
            return f"finished: all {embedded} images already cached, nothing to extract" + unusable
        if embedded is not None:
            return f"finished: {embedded} images ({extracted} extracted now, {embedded - extracted} from the cache)" \
                + unusable
        return f"finished: {outcome.get('done')}/{outcome.get('total')} images" + unusable

    def cancelled_text(self, done: int) -> str:
        return f"cancelled after {done} images (finished batches are kept)"


@dataclass(frozen=True)
class ComparisonRequest:
    """What a comparison job cross-validates: the dashboard's settings of a run, as plain values, and ``key``, the
    result store's key naming all of them and the embeddings' digests (the job's ``id`` derives from it: the same
    run asked for twice, in two tabs, is one job). The job refuses to run when the data or an encoder's cached
    embeddings no longer match what the key was made from."""

    kind: ClassVar[str] = "comparison"
    preparing: ClassVar[str] = "preparing (reading the data and the cached embeddings)…"

    data: str  # folder or manifest, as an absolute path
    key: str  # cache.results_key: where the result is stored
    data_signature: str  # data.data_signature(data, columns) when the run was asked for
    encoders: tuple[str, ...]  # those whose embeddings are complete
    digests: dict[str, str]  # encoder -> embeddings.features_digest of its cached embeddings
    heads: tuple[dict, ...]  # heads.HeadSpec fields, one dict per head
    n_folds: int = 10
    seed: int = 0
    repeats: int = 1
    group_by_fish: bool | None = None
    learning_curve: bool = False
    combined: tuple[tuple[str, ...], ...] = ()
    covariates: tuple[str, ...] = ()
    impute_covariates: bool = False
    group_column: str | None = None
    holdout_column: str | None = None
    age_range: tuple[int, int] | None = None
    columns: dict[str, str | None] | None = None  # data.ManifestColumns fields; None: native
    failed_encoders: dict[str, str] = field(default_factory=dict)  # chosen encoders left out, and why
    excluded: dict[str, str] = field(default_factory=dict)  # images left out of the run (flagged unusable), and why

    def __post_init__(self) -> None:  # JSON gives lists: back to the tuples the fields hold
        object.__setattr__(self, "data", str(Path(self.data).expanduser().resolve()))
        object.__setattr__(self, "encoders", tuple(self.encoders))
        object.__setattr__(self, "heads", tuple(dict(h, blocks=tuple(h.get("blocks", ()))) for h in self.heads))
        object.__setattr__(self, "combined", tuple(tuple(g) for g in self.combined))
        object.__setattr__(self, "covariates", tuple(self.covariates))
        if self.age_range is not None:
            object.__setattr__(self, "age_range", tuple(self.age_range))

    @property
    def id(self) -> str:
        return hashlib.sha256(f"comparison|{self.key}".encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        return f"comparing {_count(len(self.encoders), 'encoder')} x {_count(len(self.heads), 'head')} on {self.data}"

    def label(self) -> str:
        return (f"**Comparison** of {_count(len(self.encoders), 'encoder')} x {_count(len(self.heads), 'head')} "
                f"({Path(self.data).name})")

    def command(self, cache_dir: str | Path) -> list[str]:
        """The ``otolith compare-job`` command line that does this job (it reads the request from the job's record)."""
        return _python_cli("compare-job", "--cache-dir", str(Path(cache_dir).resolve()), "--job-id", self.id)

    def finished_text(self, outcome: dict) -> str:
        return f"finished: {_count(outcome.get('models', 0), 'model')}, {_count(outcome.get('folds', 0), 'fold')} fitted"

    def cancelled_text(self, done: int) -> str:
        return f"cancelled after {_count(done, 'fold')} (nothing was stored)"


JOB_KINDS: dict[str, type] = {request.kind: request for request in (ExtractionRequest, ComparisonRequest)}
JobRequest = ExtractionRequest | ComparisonRequest


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class JobStatus:
    """A job as it stands now, read from its files."""

    id: str
    request: JobRequest
    cache_dir: str  # the cache folder the job fills (its record lives in jobs/ there)
    state: str  # one of STATES
    origin: str  # "dashboard" | "terminal"
    pid: int | None
    started: float  # seconds since the epoch
    updated: float
    phase: str = ""  # preparing (reading the data), downloading (photos behind URLs), extracting, cross-validating
    done: int = 0
    total: int | None = None
    failed: int = 0
    rate: float | None = None  # things done per second in this phase (images, photos, folds)
    eta_seconds: float | None = None
    detail: str = ""  # what it works on now (a comparison: the model being fitted)
    reason: str | None = None  # why it failed
    log_tail: str = ""
    outcome: dict = field(default_factory=dict)  # what it recorded when it finished (extraction: images embedded)
    shards: tuple[dict, ...] = ()  # an extraction in shards: each shard's images, state (the scheduler's) and log

    @property
    def kind(self) -> str:
        return self.request.kind

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def fraction(self) -> float:
        """Share of the work done, 0..1 (0 while the amount is not known yet)."""
        return min(1.0, self.done / self.total) if self.total else 0.0

    def describe(self) -> str:
        """One line a person reads: what, how far, how fast."""
        if self.state == "running" and self.phase in COUNTED_PHASES and self.total is not None:
            unit, start = COUNTED_PHASES[self.phase]
            text = f"{start}{self.done}/{self.total}" + ("" if self.phase == "downloading" else f" {unit}")
            if self.detail:
                text += f" ({self.detail})"
            if self.rate:
                text += f", {self.rate:.1f} {'img' if unit == 'images' else unit}/s"
            if self.eta_seconds is not None and self.done < self.total:
                text += f", about {_duration(self.eta_seconds)} left"
            return text + (f", {self.failed} failed" if self.failed else "")
        if self.state in ACTIVE_STATES:
            return self.request.preparing
        if self.state == "finished":
            return self.request.finished_text({"done": self.done, "total": self.total, "failed": self.failed,
                                               **self.outcome})
        if self.state == "cancelled":
            return self.request.cancelled_text(self.done)
        return f"failed: {self.reason}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def jobs_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "jobs"


# ----------------------------------------------------------------------------------------------------
# Starting, reading and cancelling jobs (the dashboard's side).


def _job_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def warm_up_launcher() -> None:
    """Start the launcher the jobs are forked from (``launcher.start_launcher``) without waiting for it: the
    dashboard does this at its start, so that the first Run's jobs find its imports done."""
    start_launcher(_job_environment())


def start_job(request: JobRequest, cache_dir: str | Path) -> JobStatus:
    """Start ``request`` as a detached process, or join it when it is already running.

    The process gets its own session, so it outlives the caller; its output goes to ``log.txt``. It is forked from
    the warm launcher (``launcher.spawn``), which has the heavy libraries imported already.
    """
    folder = jobs_dir(cache_dir) / request.id
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        current = read_job(cache_dir, request.id)
        if current is not None and current.active:
            return current
        record = {"kind": request.kind, "request": asdict(request), "origin": "dashboard", "pid": None,
                  "create_time": None, "started": time.time()}
        _write_json(folder / "job.json", record)  # reads as "starting" until the process exists
        for name in ("progress.json", "outcome.json", "cancel", "shards.json"):
            (folder / name).unlink(missing_ok=True)
        with open(folder / "log.txt", "ab") as log:
            log.write(f"\n=== started {time.strftime('%Y-%m-%d %H:%M:%S')} from the dashboard\n".encode())
        pid = spawn(request.command(cache_dir), log=folder / "log.txt", env=_job_environment())
        _write_json(folder / "job.json", {**record, "pid": pid, "create_time": process_create_time(pid)})
    return read_job(cache_dir, request.id)


def read_job(cache_dir: str | Path, job_id: str) -> JobStatus | None:
    """The job's state now, or None when there is no such job."""
    folder = jobs_dir(cache_dir) / job_id
    record = _read_json(folder / "job.json")
    if record is None:
        return None
    try:
        request = JOB_KINDS[record.get("kind", ExtractionRequest.kind)](**record["request"])
    except (KeyError, TypeError):
        return None  # a record of a kind or fields this version does not know
    progress = _read_json(folder / "progress.json") or {}
    outcome = _read_json(folder / "outcome.json")
    started = float(record.get("started", 0.0))
    updated = max(started, float(progress.get("updated", 0.0)), float((outcome or {}).get("ended", 0.0)))
    if outcome is not None:
        state, reason = outcome.get("state", "failed"), outcome.get("reason")
    elif process_alive(record.get("pid"), record.get("create_time")):
        state, reason = ("running" if progress else "starting"), None
    elif record.get("pid") is None and time.time() - started < START_GRACE_SECONDS:
        state, reason = "starting", None
    elif (folder / "cancel").exists():
        state, reason = "cancelled", None  # stopped before it could record how it ended
    else:
        state, reason = "failed", "the process ended without finishing (killed, or out of memory?); see the log"
    return JobStatus(
        id=job_id, request=request, cache_dir=str(cache_dir), state=state, origin=record.get("origin", "terminal"),
        pid=record.get("pid"), started=started, updated=updated, phase=progress.get("phase", ""),
        done=int(progress.get("done", 0)), total=progress.get("total"), failed=int(progress.get("failed", 0)),
        rate=progress.get("rate"), eta_seconds=progress.get("eta_seconds"), detail=progress.get("detail", ""),
        reason=reason, log_tail=last_lines(folder / "log.txt") if state != "finished" else "",
        outcome={k: v for k, v in outcome.items() if k not in ("state", "reason", "ended")} if state == "finished"
        else {},
        shards=tuple((_read_json(folder / "shards.json") or {}).get("shards", ())),
    )


def list_jobs(cache_dir: str | Path) -> list[JobStatus]:
    """Every recorded job, most recently updated first."""
    root = jobs_dir(cache_dir)
    if not root.is_dir():
        return []
    jobs = [read_job(cache_dir, folder.name) for folder in root.iterdir() if folder.is_dir()]
    return sorted((j for j in jobs if j is not None), key=lambda j: j.updated, reverse=True)


def cancel_job(cache_dir: str | Path, job_id: str) -> None:
    """Ask a job to stop: it ends between two batches (finished batches stay cached)."""
    folder = jobs_dir(cache_dir) / job_id
    if not folder.is_dir():
        return
    (folder / "cancel").touch()
    record = _read_json(folder / "job.json") or {}
    if process_alive(record.get("pid"), record.get("create_time")):
        try:
            os.kill(int(record["pid"]), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


# ----------------------------------------------------------------------------------------------------
# Recording a job from inside its process (``otolith extract``, ``otolith compare-job``).


class JobRecorder:
    """Writes a running job's record, progress and outcome; turns a cancel into :class:`Cancelled`.

    Use as ``with JobRecorder(cache_dir, request, job_id) as job: ... job.progress(done, total, failed)``.
    """

    def __init__(self, cache_dir: str | Path, request: JobRequest, job_id: str | None = None) -> None:
        self.request = request
        self.cache_dir = Path(cache_dir)
        launched = job_id is not None
        job_id = job_id or request.id
        current = read_job(cache_dir, job_id)
        if not launched and current is not None and current.active and current.pid != os.getpid():
            job_id = f"{job_id}-{os.getpid()}"  # the same work is running elsewhere: both are safe, record apart
        self.id = job_id
        self.folder = jobs_dir(cache_dir) / job_id
        self.origin = "dashboard" if launched else "terminal"
        self._first: tuple[float, int, str] | None = None  # when the current phase's counting began
        self._last_log = 0.0
        self._counts: dict[str, int] = {}

    def __enter__(self) -> JobRecorder:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.origin == "terminal":
            for name in ("progress.json", "outcome.json", "cancel", "shards.json"):
                (self.folder / name).unlink(missing_ok=True)
        record = _read_json(self.folder / "job.json") or {}
        _write_json(self.folder / "job.json", {
            "kind": self.request.kind, "request": asdict(self.request), "origin": self.origin, "pid": os.getpid(),
            "create_time": process_create_time(os.getpid()), "started": record.get("started", time.time()),
        })
        self._write_progress("preparing", 0, None, 0)
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_term)
        self.log(f"{self.request.title} (pid {os.getpid()})")
        if (self.folder / "cancel").exists():  # cancelled while it was starting
            self.__exit__(Cancelled, Cancelled(), None)
            raise Cancelled()
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        signal.signal(signal.SIGTERM, self._previous_handler)
        if error is None:
            state, reason = "finished", None
        elif isinstance(error, (Cancelled, KeyboardInterrupt)):
            state, reason = "cancelled", None
        else:
            state, reason = "failed", str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        _write_json(self.folder / "outcome.json", {"state": state, "reason": reason, "ended": time.time(),
                                                   **(self._counts if state == "finished" else {})})
        self.log(state + (f": {reason}" if reason else ""))
        return False

    def finished_with(self, **counts: int) -> None:
        """What the job achieved, recorded when it ends (an extraction: ``embedded``, the images the cache holds
        for it, and ``extracted``, how many it extracted; a comparison: ``models`` and ``folds`` fitted)."""
        self._counts = {name: int(value) for name, value in counts.items()}

    def _on_term(self, signum, frame) -> None:
        raise Cancelled()

    def progress(self, done: int, total: int, failed: int = 0) -> None:
        """Record progress after a batch; raises :class:`Cancelled` when a cancel was asked for."""
        self._step("extracting", done, total, failed)

    def downloading(self, done: int, total: int, failed: int = 0) -> None:
        """Record photos downloaded so far (before extracting); raises :class:`Cancelled` when a cancel was asked for."""
        self._step("downloading", done, total, failed)

    def sharded(self, shards: list[dict]) -> None:
        """Record where each shard stands (``index``, ``images``, ``embedded``, ``failed``, ``state``: running,
        finished or failed, as the scheduler says, ``why``, ``job``: the scheduler's id, ``log``); raises
        :class:`Cancelled` when a cancel was asked for."""
        _write_json(self.folder / "shards.json", {"shards": shards, "updated": time.time()})
        states = [s["state"] for s in shards]
        counts = ", ".join(f"{states.count(state)} {state}" for state in ("finished", "running", "pending", "failed")
                           if states.count(state))
        self._step("extracting", sum(s["embedded"] + s["failed"] for s in shards), sum(s["images"] for s in shards),
                   sum(s["failed"] for s in shards), f"{len(shards)} shards: {counts}")

    def cross_validating(self, done: int, total: int, detail: str = "") -> None:
        """Record folds fitted so far and the model being fitted; raises :class:`Cancelled` when a cancel was asked
        for."""
        self._step("cross-validating", done, total, 0, detail)

    def _step(self, phase: str, done: int, total: int, failed: int, detail: str = "") -> None:
        if (self.folder / "cancel").exists():
            raise Cancelled()
        self._write_progress(phase, done, total, failed, detail)

    def _write_progress(self, phase: str, done: int, total: int | None, failed: int, detail: str = "") -> None:
        now = time.time()
        rate = eta = None
        if phase in COUNTED_PHASES:
            if self._first is None or self._first[2] != phase:
                self._first = (now, done, phase)
            elapsed, gained = now - self._first[0], done - self._first[1]
            if elapsed > 0 and gained > 0:
                rate = gained / elapsed
                eta = (total - done) / rate if total is not None else None
        _write_json(self.folder / "progress.json", {"phase": phase, "done": done, "total": total, "failed": failed,
                                                    "rate": rate, "eta_seconds": eta, "detail": detail, "updated": now})
        if phase in COUNTED_PHASES and (now - self._last_log >= LOG_EVERY_SECONDS or done == total):
            self._last_log = now
            unit = COUNTED_PHASES[phase][0]
            self.log(f"{phase} {done}/{total} {unit}" + (f" ({detail})" if detail else "")
                     + (f", {rate:.2f} {unit}/s" if rate else "") + (f", {failed} failed" if failed else ""))

    def log(self, line: str) -> None:
        if self.origin == "terminal":  # a launched job's output already goes to the log
            with open(self.folder / "log.txt", "a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        else:
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


# ----------------------------------------------------------------------------------------------------


def process_alive(pid, create_time) -> bool:
    """Whether process ``pid`` is the one recorded (same start time) and has not ended (zombies have)."""
    if not pid:
        return False
    import psutil

    try:
        process = psutil.Process(int(pid))
        if create_time is not None and abs(process.create_time() - float(create_time)) > 1.0:
            return False  # the pid was reused by another process
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_create_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch; None when it is gone), to tell it from a later
    process given the same pid."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader sees the old or the new file, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def last_lines(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on a job folder, so two dashboards starting one job start it once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock (one dashboard per cache folder there)
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
