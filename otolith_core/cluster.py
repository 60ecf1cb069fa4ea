"""Where the shards of a plan (:mod:`otolith_core.shards`) run: processes on this machine, a SLURM job array
through submitit, or Ray tasks. Each shard is one task; the scheduler keeps its own state, and the jobs it was
given are recorded in the plan's folder (``submitted.json``), so their state can be read and they can be cancelled
from another process.

The cluster's settings come from a small TOML file (``--cluster-config``)::

    partition = "gpu"          # SLURM partition
    gpus_per_task = 1
    cpus_per_task = 8
    mem_gb = 32
    time_minutes = 120         # per task; a task past it is requeued and goes on where it stopped
    array_parallelism = 16     # tasks of the array running at once
    account = "fisheries"      # optional
    ray_address = "auto"       # Ray: a running cluster ("auto", "ray://host:10001"); unset: a local Ray instance
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .jobs import process_create_time
from .shards import ShardPlan, run_shard

EXECUTORS = ("local", "slurm", "ray")
SUBMITTED = "submitted.json"
INSTALL = {"slurm": "pip install 'otolith-dashboard[slurm]' (submitit)", "ray": "pip install 'otolith-dashboard[ray]'"}
# file systems every node of a cluster sees; a path on any other is checked before submitting
SHARED_FILE_SYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "cifs", "smb3", "smbfs",
                       "glusterfs", "fuse.glusterfs", "fuse.sshfs", "panfs", "wekafs", "fuse.weka"}
NODE_LOCAL_FILE_SYSTEMS = {"tmpfs", "ramfs", "devtmpfs", "overlay", "squashfs"}


@dataclass(frozen=True)
class ClusterConfig:
    """A cluster's settings for shard tasks (see the module docstring for the file)."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    mem_gb: int | None = None
    time_minutes: int = 120
    array_parallelism: int = 32
    account: str | None = None
    qos: str | None = None
    ray_address: str | None = None
    # submitit's cluster: "slurm"; "local" runs the array's tasks as processes on this machine (to try a setup)
    slurm_cluster: str = "slurm"


def read_cluster_config(path: str | Path | None) -> ClusterConfig:
    """The settings in the TOML file ``path`` (None: the defaults); an unknown key is named, never ignored."""
    if path is None:
        return ClusterConfig()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        values = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read the cluster settings {path}: {exc}") from exc
    known = {f.name: f for f in fields(ClusterConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, value in values.items():
        whole = isinstance(getattr(ClusterConfig(), name), int) or name == "mem_gb"
        if whole and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{path}: {name} must be a whole number of 0 or more, got {value!r}")
        if not whole and not isinstance(value, str):
            raise ValueError(f"{path}: {name} must be text (in quotes), got {value!r}")
    return ClusterConfig(**values)


def require(executor: str) -> None:
    """Raise ImportError saying what to install when ``executor``'s scheduler library is missing."""
    module = {"slurm": "submitit", "ray": "ray"}.get(executor)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError as exc:
        raise ImportError(f"--executor {executor} needs {module}: {INSTALL[executor]}") from exc


def storage_problems(paths: dict[str, str | Path], *, mounts: str | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) about ``paths`` (what -> path) that compute nodes may not see.

    A path on a node-local file system (tmpfs, overlay) or under /tmp is an error: no other machine sees it. One on
    a local disk (ext4, xfs, ...) is a warning: other nodes see it only where it is exported to them. NFS, Lustre,
    GPFS and the like are fine. ``mounts``: the text of /proc/mounts (read when None).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return [], []
    table = []
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            table.append((parts[1].replace("\\040", " "), parts[2]))
    errors, warnings = [], []
    for what, path in paths.items():
        resolved = str(Path(path).expanduser().resolve())
        point, kind = max(((p, t) for p, t in table if resolved == p or resolved.startswith(p.rstrip("/") + "/")),
                          key=lambda pt: len(pt[0]), default=("/", "unknown"))
        if kind in SHARED_FILE_SYSTEMS:
            continue
        where = f"{what} {resolved} is on {kind} ({point})"
        if kind in NODE_LOCAL_FILE_SYSTEMS or resolved.startswith(("/tmp/", "/var/tmp/", "/dev/shm/")):
            errors.append(f"{where}, which only this machine sees: put it on storage every node sees (NFS, Lustre, "
                          "GPFS...)")
        else:
            warnings.append(f"{where}: compute nodes see it only if this disk is exported to them")
    return errors, warnings


class ShardsFailed(RuntimeError):
    """Some shards of a submission failed (each named); the others' batches are merged."""


@dataclass(frozen=True)
class ShardTask:
    """One shard, as the scheduler knows it."""

    index: int
    executor: str
    job_id: str  # the scheduler's id (SLURM: ARRAY_TASK; local: the process id; Ray: the task id)
    log: str  # where its output goes ('' when the scheduler keeps it)
    host: str = ""  # local: the machine whose process it is, and the process's start time (a pid is reused)
    create_time: float | None = None


class _SubmititShard:
    """The callable submitit pickles for each array task: runs the shard; requeued (``checkpoint``) on a timeout or
    a preemption, when it goes on after its last whole batch."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, index: int):
        return run_shard(self.folder, index)

    def checkpoint(self, index: int):
        import submitit

        return submitit.helpers.DelayedSubmission(_SubmititShard(self.folder), index)


def _ray_shard(folder: str, index: int):
    return run_shard(folder, index)


class Submission:
    """Shards handed to a scheduler; :meth:`wait` waits for them and names each that failed."""

    def __init__(self, plan: ShardPlan, executor: str, tasks: list[ShardTask], handles: list) -> None:
        self.plan, self.executor, self.tasks, self._handles = plan, executor, tasks, handles
        self.workers = len(handles)  # local: shards running at once (the others wait for a free slot)

    def poll(self) -> dict[int, str]:
        """Each shard's state as its scheduler tells it now: ``pending`` (queued), ``running``, ``finished`` or
        ``failed: why``. Local shards waiting for a slot are started here."""
        if self.executor == "local":
            return self._poll_local()
        states = {}
        for task, handle in zip(self.tasks, self._handles):
            if self.executor == "slurm":
                if not handle.done():  # waiting in the queue, or running
                    states[task.index] = "pending" if str(handle.state).upper() == "PENDING" else "running"
                    continue
                try:
                    handle.result()
                    states[task.index] = "finished"
                except Exception as exc:  # the task's error, or the scheduler's (cancelled, out of time)
                    states[task.index] = f"failed: {_last_line(str(exc))}; log {task.log}"
            else:
                import ray

                ready, _ = ray.wait([handle], timeout=0)
                if not ready:
                    states[task.index] = "running"
                    continue
                try:
                    ray.get(handle)
                    states[task.index] = "finished"
                except Exception as exc:
                    states[task.index] = f"failed: {_last_line(str(exc))}"
        return states

    def _poll_local(self) -> dict[int, str]:
        states = {shard.index: shard.state() for shard in self._handles}
        free = self.workers - list(states.values()).count("running")
        started = False
        for shard in self._handles:
            if free > 0 and states[shard.index] == "pending":
                shard.start()
                states[shard.index], free, started = "running", free - 1, True
        if started:
            self.tasks = [ShardTask(s.index, "local", str(s.process.pid) if s.process else "", str(s.log),
                                    socket.gethostname(), process_create_time(s.process.pid) if s.process else None)
                          for s in self._handles]
            _record(self.plan, self.tasks)
        return states

    def wait(self, *, every: float = 2.0, on_poll=None) -> dict[int, str]:
        """Wait for every shard, calling ``on_poll(states)`` (see :meth:`poll`) every ``every`` seconds; returns
        {shard: why it failed} (empty when all finished). An exception from ``on_poll`` (a cancel) cancels them."""
        try:
            while True:
                states = self.poll()
                if on_poll is not None:
                    on_poll(states)
                if not {"running", "pending"} & set(states.values()):
                    return {i: s.split(": ", 1)[1] for i, s in states.items() if s.startswith("failed")}
                time.sleep(every)
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Stop every shard still running (finished batches stay in the shards' folders); a second cancel asked
        meanwhile (another SIGTERM) does not cut this one short."""
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for handle in self._handles:
                try:
                    if self.executor == "local":
                        handle.stop()
                    elif self.executor == "slurm":
                        handle.cancel(check=False)
                    else:
                        import ray

                        ray.cancel(handle, force=True)
                except Exception:  # already ended, or the scheduler is gone: nothing left to stop
                    pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def submit(plan: ShardPlan, executor: str, config: ClusterConfig | None = None, *,
           shards: list[int] | None = None, workers: int | None = None) -> Submission:
    """Hand the shards of ``plan`` (all, or ``shards``) to ``executor``; returns at once.

    ``local``: one process per shard, ``workers`` at a time (default: the cores, at most the shards), each with
    its share of the cores. ``slurm``: one job array through submitit, a task per shard. ``ray``: one task per
    shard with ``gpus_per_task`` GPUs, on the cluster at ``ray_address`` or a Ray instance started here.
    """
    config = config or ClusterConfig()
    indices = list(range(plan.n_shards)) if shards is None else list(shards)
    require(executor)
    if executor == "local":
        submission = _submit_local(plan, indices, workers)
    elif executor == "slurm":
        submission = _submit_slurm(plan, indices, config)
    elif executor == "ray":
        submission = _submit_ray(plan, indices, config)
    else:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    _record(plan, submission.tasks)
    return submission


class _LocalShard:
    """A shard as a process on this machine, started when a worker slot is free (see :meth:`Submission.poll`)."""

    def __init__(self, plan: ShardPlan, index: int, env: dict) -> None:
        self.plan, self.index, self.env = plan, index, env
        self.log = plan.folder / "logs" / f"shard-{index:04d}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(self.plan.shard_command(self.index), stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)

    def state(self) -> str:
        if self.process is None:
            return "pending"
        code = self.process.poll()
        return "running" if code is None else "finished" if code == 0 else \
            f"failed: exit status {code}; log {self.log}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:  # one never started has nothing to stop
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _submit_local(plan: ShardPlan, indices: list[int], workers: int | None) -> Submission:
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(indices) or 1))
    threads = str(max(1, cores // workers))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    shards = [_LocalShard(plan, index, env) for index in indices]
    submission = Submission(plan, "local", [ShardTask(s.index, "local", "", str(s.log)) for s in shards], shards)
    submission.workers = workers
    submission.poll()  # starts the first ``workers`` shards
    return submission


def _submit_slurm(plan: ShardPlan, indices: list[int], config: ClusterConfig) -> Submission:
    import submitit

    executor = submitit.AutoExecutor(folder=str(plan.folder / "slurm" / "%j"), cluster=config.slurm_cluster)
    parameters = {"timeout_min": config.time_minutes, "gpus_per_node": config.gpus_per_task,
                  "cpus_per_task": config.cpus_per_task, "mem_gb": config.mem_gb, "nodes": 1, "tasks_per_node": 1,
                  "name": f"otolith-{plan.id}", "slurm_partition": config.partition,
                  "slurm_array_parallelism": config.array_parallelism, "slurm_account": config.account,
                  "slurm_qos": config.qos}
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    jobs = executor.map_array(_SubmititShard(str(plan.folder)), indices)
    tasks = [ShardTask(index, "slurm", str(job.job_id), str(job.paths.stdout)) for index, job in zip(indices, jobs)]
    return Submission(plan, "slurm", tasks, jobs)


def _submit_ray(plan: ShardPlan, indices: list[int], config: ClusterConfig) -> Submission:
    import ray

    if not ray.is_initialized():
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False,
                 **({} if config.ray_address else {"num_cpus": os.cpu_count() or 1}))
    remote = ray.remote(num_cpus=config.cpus_per_task if config.ray_address else 1, num_gpus=config.gpus_per_task,
                        max_retries=3)(_ray_shard)
    refs = [remote.remote(str(plan.folder), index) for index in indices]
    tasks = [ShardTask(index, "ray", ref.hex(), "") for index, ref in zip(indices, refs)]
    return Submission(plan, "ray", tasks, refs)


def submitted(plan: ShardPlan) -> list[ShardTask]:
    """The tasks last handed to a scheduler for ``plan`` (from its folder)."""
    try:
        return [ShardTask(**t) for t in json.loads((plan.folder / SUBMITTED).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def scheduler_states(plan: ShardPlan) -> dict[int, str]:
    """The scheduler's word on each submitted shard ({shard: state}), where it can be asked from here: SLURM
    through submitit (sacct), local processes by their pid. Ray tasks live with the process that submitted them:
    their shards' folders tell how far they got (:func:`otolith_core.shards.shard_states`)."""
    states = {}
    for task in submitted(plan):
        if task.executor == "slurm":
            try:
                import submitit

                states[task.index] = submitit.SlurmJob(plan.folder / "slurm" / "%j", task.job_id).state
            except Exception as exc:  # no sacct here, or the job is too old for it
                states[task.index] = f"unknown ({_last_line(str(exc))})"
        elif task.executor == "local":
            states[task.index] = ("WAITING" if not task.job_id else "RUNNING" if _alive(task) else "ENDED")
    return states


def cancel(plan: ShardPlan) -> list[str]:
    """Cancel the shards submitted for ``plan`` that a scheduler can be asked to cancel from here; what was done."""
    done = []
    for task in submitted(plan):
        try:
            if task.executor == "slurm":
                import submitit

                submitit.SlurmJob(plan.folder / "slurm" / "%j", task.job_id).cancel(check=False)
            elif task.executor == "local" and task.host and task.host != socket.gethostname():
                done.append(f"shard {task.index}: a process on {task.host}; cancel it there")
                continue
            elif task.executor == "local" and task.job_id and _alive(task):
                os.kill(int(task.job_id), 15)
            elif task.executor == "ray":
                done.append(f"shard {task.index}: Ray tasks end with the process that submitted them; stop it "
                            "(Ctrl+C) to cancel them")
                continue
            else:
                continue
            done.append(f"shard {task.index}: {task.executor} job {task.job_id} cancelled")
        except Exception as exc:
            done.append(f"shard {task.index}: {task.executor} job {task.job_id} could not be cancelled ({exc})")
    return done


def _record(plan: ShardPlan, tasks: list[ShardTask]) -> None:
    from dataclasses import asdict

    previous = {t.index: t for t in submitted(plan)}
    previous.update({t.index: t for t in tasks})
    text = json.dumps([asdict(t) for t in sorted(previous.values(), key=lambda t: t.index)])
    partial = plan.folder / f"{SUBMITTED}.{os.getpid()}.tmp"
    partial.write_text(text)
    os.replace(partial, plan.folder / SUBMITTED)


def _alive(task: ShardTask) -> bool:
    """Whether a local shard's process is running on this machine: the same pid and start time, not a zombie."""
    from .jobs import process_alive

    if task.host and task.host != socket.gethostname():
        return False
    try:
        return process_alive(int(task.job_id), task.create_time)
    except ValueError:  # no pid recorded
        return False


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


