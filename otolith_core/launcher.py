"""Job processes forked from a warm launcher, so that a job does not spend its first seconds importing.

A comparison job spends about 3 s of CPU importing scikit-learn, SciPy and pandas before it reads a byte, and an
extraction with a torch encoder 8 s more importing torch and torchvision, every time. The launcher is one process
per installed version of this package, Python and thread settings. It imports ``PRELOAD`` (and
``PRELOAD_IF_INSTALLED``) once, then forks each job: a child in its own session, with the environment and folder
of whoever asked, writing to the job's log, running ``otolith_core.cli`` as ``python -m`` would. Once forked, a job
does not depend on the launcher: it outlives it as it outlives the dashboard. The launcher ends after
``IDLE_SECONDS`` without a job.

Nobody waits for a launcher's imports (11 s of CPU on a small machine): the dashboard starts it at its own start
(:func:`start_launcher`), and a job that finds none ready starts it for the jobs after it and runs as a fresh
process itself.

Linux only: macOS's system libraries are not safe to fork once loaded (Python's multiprocessing stopped forking
there for that reason), and Windows has no fork. Anything that goes wrong on the way (no launcher ready, a refused
socket) falls back to a fresh ``python -m otolith_core.cli`` process, as before; ``OTOLITH_WARM_LAUNCHER=0`` always
does.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# Modules every job imports and that read nothing of the environment a job is given, but the thread settings
# (``THREAD_VARIABLES``, part of the launcher's key). Nothing of otolith_core: its modules are read as the job runs.
PRELOAD = ("numpy", "pandas", "scipy.stats", "sklearn.linear_model", "sklearn.svm", "sklearn.model_selection",
           "sklearn.preprocessing", "sklearn.pipeline")
# Imported too where they are installed (a launcher without them serves all the same). Not open_clip, timm or
# huggingface_hub: they read the job's environment (HF_HUB_OFFLINE, HF_HOME) as they are imported.
PRELOAD_IF_INSTALLED = ("torch", "torchvision")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
IDLE_SECONDS = 600.0
CLI = "otolith_core.cli"


def spawn(command: list[str], *, log: Path, env: dict[str, str]) -> int:
    """Start ``command`` (``[sys.executable, "-m", "otolith_core.cli", ...]``) detached, in its own session, its
    output appended to ``log``; returns its pid. Forked from the warm launcher where it can be, else a new process."""
    if _warm_allowed(env) and command[:3] == [sys.executable, "-m", CLI]:
        try:
            return _forked(command[3:], log=log, env=env)
        except (OSError, ValueError, KeyError):
            pass  # a fresh process below, as without a launcher
    with open(log, "ab") as out:
        detached = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   close_fds=True, env=env, **detached)
    # Reap the child when it ends, so it never lingers as a zombie of a long-running dashboard.
    threading.Thread(target=process.wait, daemon=True).start()
    return process.pid


def _warm_allowed(env: dict[str, str]) -> bool:
    """Whether jobs may be forked from a launcher here: Linux (see above), and not ``OTOLITH_WARM_LAUNCHER=0``."""
    return sys.platform.startswith("linux") and env.get("OTOLITH_WARM_LAUNCHER", "1") != "0"


def launcher_address(env: dict[str, str]) -> Path:
    """The socket of the launcher for this package's code, this Python and ``env``'s thread settings."""
    package = Path(__file__).resolve().parent
    code = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in package.rglob("*.py"))
    threads = [env.get(name, "") for name in THREAD_VARIABLES]
    key = hashlib.sha256(json.dumps([sys.executable, str(package), code, threads]).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"otolith-launcher-{os.getuid()}-{key}.sock"


def _forked(argv: list[str], *, log: Path, env: dict[str, str]) -> int:
    address = launcher_address(env)
    connection = _connect(address)
    if connection is None:
        _start_in_background(address, env)  # for the jobs after this one, which need not wait for its imports
        raise OSError(f"no launcher ready at {address}")
    with connection, connection.makefile("rw", encoding="utf-8") as stream:
        stream.write(json.dumps({"argv": argv, "env": env, "cwd": os.getcwd(), "log": str(log)}) + "\n")
        stream.flush()
        answer = json.loads(stream.readline() or "{}")
    return int(answer["pid"])


def start_launcher(env: dict[str, str]) -> subprocess.Popen | None:
    """Start the launcher :func:`spawn` would use with ``env``, unless it runs already; returns at once, while it
    imports (the new launcher's process, or None). Nothing on a machine without fork or with
    ``OTOLITH_WARM_LAUNCHER=0``."""
    return _start_in_background(launcher_address(env), env) if _warm_allowed(env) else None


def _start_in_background(address: Path, env: dict[str, str]) -> subprocess.Popen | None:
    if len(str(address)) + 12 > 107:  # a socket's path (and the launcher's temporary name beside it) has a limit
        return None
    launcher = _start_launcher(address, env)
    if launcher is not None:  # reaped when it ends (idle, or stopped)
        threading.Thread(target=launcher.wait, daemon=True).start()
    return launcher


def stop_launcher(env: dict[str, str]) -> None:
    """Ask the launcher ``spawn`` would use with ``env`` to end now (the jobs it forked go on); none: nothing."""
    connection = _connect(launcher_address(env))
    if connection is not None:
        with connection:
            connection.sendall(b'{"stop": true}\n')


def _connect(address: Path) -> socket.socket | None:
    """A connection to the launcher at ``address``, or None. Only to a launcher run by this user: the socket lies in
    the shared temporary folder, and a job's request carries its environment."""
    import struct

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(30.0)
    try:
        client.connect(str(address))
        _, uid, _ = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            raise OSError(f"{address} is served by another user ({uid})")
        return client
    except OSError:
        client.close()
        return None


def _start_launcher(address: Path, env: dict[str, str]) -> subprocess.Popen | None:
    """A launcher for ``address``, in its own session (None: one was there already); one at a time (the lock),
    the others find it."""
    from filelock import FileLock

    with FileLock(str(address) + ".lock"):
        found = _connect(address)
        if found is not None:
            found.close()
            return None
        if _importing(address):  # the jobs after it find it ready; a second one would import all over again
            return None
        address.unlink(missing_ok=True)  # left by a launcher that was killed
        threads = {name: env[name] for name in THREAD_VARIABLES if name in env}
        launcher = subprocess.Popen([sys.executable, "-m", "otolith_core.launcher", str(address)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    close_fds=True, start_new_session=True, env={**os.environ, **threads})
        _pid_mark(address).write_text(f"{launcher.pid} {_started_at(launcher.pid)}")
    return launcher


def _pid_mark(address: Path) -> Path:
    """Beside the socket: ``"<pid> <start time>"`` of the launcher last started for ``address``."""
    return Path(str(address) + ".pid")


def _importing(address: Path) -> bool:
    """Whether the launcher last started for ``address`` still runs (it does not answer yet: it is importing).

    The process is known by its pid and the time it started, so a pid reused by another process does not count.
    (Its command line cannot tell: for a moment after ``Popen`` returns, while the kernel still sets up the new
    program, it reads empty, and a second launcher was started then.)"""
    try:
        pid, started = _pid_mark(address).read_text().split()
    except (OSError, ValueError):
        return False
    return _started_at(int(pid)) == started


def _started_at(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat), or None if it has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # its state (a zombie has ended), then field 22


def serve(address: Path) -> None:
    """The launcher: import ``PRELOAD``, then fork one job per request until ``IDLE_SECONDS`` pass without one.

    The modules load with Python's cyclic garbage collector off, and are then frozen (``gc.freeze``), as Python's
    documentation advises for a process that forks without exec: they live as long as the launcher, so no collection
    needs to walk them, neither while they load (a seventh of the imports' CPU) nor in the jobs, which then leave the
    pages they share with the launcher unwritten (a collection would touch every object it walks)."""
    import gc
    import importlib

    gc.disable()
    for name in PRELOAD:
        importlib.import_module(name)
    for name in PRELOAD_IF_INSTALLED:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not installed, or broken: a job that needs it says so in its own log
            pass
    gc.freeze()
    gc.enable()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the jobs are reaped as they end: no zombies
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = address.with_name(address.name + f".{os.getpid()}")
    server.bind(str(partial))
    os.chmod(partial, 0o600)
    server.listen(16)
    os.replace(partial, address)  # listening before it can be found
    ours = os.stat(address).st_ino
    server.settimeout(IDLE_SECONDS)
    try:
        while True:
            try:
                connection, _ = server.accept()
            except socket.timeout:
                return
            connection.settimeout(10.0)  # a client that connects and sends nothing cannot hold the others up
            with connection, connection.makefile("rw", encoding="utf-8") as stream:
                try:
                    request = json.loads(stream.readline())
                    if request.get("stop"):
                        return
                    pid = os.fork()
                except (OSError, ValueError, AttributeError):
                    continue
                if pid == 0:
                    server.close()
                    _run_job(request)  # never returns
                try:
                    stream.write(json.dumps({"pid": pid}) + "\n")
                    stream.flush()
                except OSError:  # the asker is gone; its job runs all the same
                    pass
    finally:
        server.close()
        try:
            if os.stat(address).st_ino == ours:  # not a newer launcher's
                address.unlink()
        except OSError:
            pass
        mark = _pid_mark(address)
        try:
            if mark.read_text().split()[0] == str(os.getpid()):
                mark.unlink()
        except (OSError, IndexError):
            pass


def _run_job(request: dict) -> None:
    """In the forked child: become the job (its session, folder, environment and log), run the CLI, exit."""
    import io
    import traceback

    code = 1
    try:
        os.setsid()
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE):  # as a fresh Python process has them
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), write_through=True)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # read again from this environment's TMPDIR
        sys.argv = [CLI, *request["argv"]]
        from otolith_core.cli import main

        code = main(request["argv"]) or 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever ends the job is in its log, as a fresh process would show it
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":  # pragma: no cover - started by _start_launcher
    serve(Path(sys.argv[1]))
