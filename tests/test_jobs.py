"""Extraction jobs: detached processes that outlive whoever started them, can be joined, cancelled and restarted."""

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from otolith_core.cli import main
from otolith_core.data import load_dataset
from otolith_core.embeddings import cached_count, extract_embeddings
from otolith_core.jobs import Cancelled, ExtractionRequest, JobRecorder, cancel_job, list_jobs, read_job, start_job
from otolith_core.encoders import registry, resolve_encoder

pytestmark = pytest.mark.slow


def _wait(cache, job_id, states=("finished", "failed", "cancelled"), timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = read_job(cache, job_id)
        if job is not None and job.state in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {read_job(cache, job_id)} after {timeout} s")


def test_a_job_outlives_the_process_that_started_it(demo_manifest, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    request = ExtractionRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=4)
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from otolith_core.jobs import ExtractionRequest, start_job
        start_job(ExtractionRequest({str(demo_manifest)!r}, {f"local-dir:{tiny_model_dir}"!r}, batch_size=4), {str(cache)!r})
        print("started", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    assert starter.stdout.readline().strip() == "started"
    starter.send_signal(signal.SIGKILL)  # the dashboard dies; the job does not
    starter.wait()
    job = _wait(cache, request.id)
    assert job.state == "finished", job
    assert job.origin == "dashboard" and job.done == job.total == len(pd.read_csv(demo_manifest))
    data = load_dataset(demo_manifest)
    assert cached_count(data, resolve_encoder(request.encoder), cache_dir=cache) == len(data)


def test_starting_a_running_job_again_joins_it(demo_manifest, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    request = ExtractionRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=2)
    first = start_job(request, cache)
    second = start_job(ExtractionRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=2), cache)
    assert first.active and second.pid == first.pid
    assert [j.id for j in list_jobs(cache)] == [request.id]
    cancel_job(cache, request.id)
    assert _wait(cache, request.id).state == "cancelled"


def test_cancel_stops_between_batches_and_leaves_a_readable_cache(demo_manifest, tmp_path):
    cache = tmp_path / "cache"
    data = load_dataset(demo_manifest)
    spec = registry()["pixels-32"]
    request = ExtractionRequest(str(demo_manifest), "pixels-32")
    with pytest.raises(Cancelled):
        with JobRecorder(cache, request) as job:
            def progress(done, total, failed):
                job.progress(done, total, failed)
                if done >= 16:
                    cancel_job(cache, job.id)  # as the dashboard's Cancel button does, from anywhere

            extract_embeddings(data, spec, cache_dir=cache, batch_size=8, progress=progress)
    status = read_job(cache, request.id)
    assert status.state == "cancelled" and status.done == 16 and "cancelled after 16 images" in status.describe()
    partial = extract_embeddings(data, spec, cache_dir=cache, cached_only=True)
    assert len(partial.rows) == 16 and len(partial.pending) == len(data) - 16 and not partial.failures
    rest = extract_embeddings(data, spec, cache_dir=cache)
    assert rest.n_extracted == len(data) - 16 and len(rest.rows) == len(data)


def test_a_killed_job_reads_as_failed_with_its_log_and_can_be_restarted(demo_manifest, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    request = ExtractionRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=1)
    job = start_job(request, cache)
    job = _wait(cache, request.id, states=("running",))
    os.kill(job.pid, signal.SIGKILL)  # out of memory, or a killed process
    failed = _wait(cache, request.id)
    assert failed.state == "failed" and "ended without finishing" in failed.reason
    assert "extracting local-dir:" in failed.log_tail
    assert _wait(cache, start_job(request, cache).id).state == "finished"


def test_an_extraction_typed_in_a_terminal_shows_up_as_a_job(demo_manifest, tmp_path):
    cache = tmp_path / "cache"
    assert main(["extract", "--data", str(demo_manifest), "--model", "pixels-32", "--cache-dir", str(cache)]) == 0
    (job,) = list_jobs(cache)
    assert job.origin == "terminal" and job.state == "finished" and job.request.encoder == "pixels-32"
    assert job.done == job.total == len(pd.read_csv(demo_manifest))
    n = len(pd.read_csv(demo_manifest))
    assert job.describe() == f"finished: {n} images ({n} extracted now, 0 from the cache)"
    assert main(["extract", "--data", str(demo_manifest), "--model", "pixels-32", "--cache-dir", str(cache)]) == 0
    (again,) = list_jobs(cache)  # nothing left to do: it says so (it said "finished: 0/None images")
    assert again.state == "finished" and again.describe() == f"finished: all {n} images already cached, nothing to extract"


def test_a_job_that_cannot_run_fails_with_the_reason(demo_manifest, tmp_path, offline_hub):
    cache = tmp_path / "cache"
    request = ExtractionRequest(str(demo_manifest), "clip-vit-l-14-336", weights_dir=str(tmp_path / "hf"))
    start_job(request, cache)
    job = _wait(cache, request.id)
    assert job.state == "failed" and "not on this machine" in job.reason and "error:" in job.log_tail


def test_a_cancel_before_the_process_has_started_is_honoured(demo_manifest, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    request = ExtractionRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}")
    start_job(request, cache)
    cancel_job(cache, request.id)  # while it is still importing torch
    assert _wait(cache, request.id).state == "cancelled"
    data = load_dataset(demo_manifest)
    assert cached_count(data, resolve_encoder(request.encoder), cache_dir=cache) < len(data)


def test_a_job_shows_its_downloads_and_a_cancel_stops_them(tmp_path, photo_server):
    """Photos behind URLs are downloaded first, shown on the job card as photos done; a cancel stops the download
    between photos, the finished photos stay in the cache, and the next job fetches only the rest."""
    from conftest import write_tray_export
    from otolith_core.data import ManifestColumns, download_missing

    csv = write_tray_export(photo_server.folder, boxes_per_tray=3, base_url=photo_server.url)
    columns = ManifestColumns(path="image__content__url", box="bounding_box", id="measurement_id")
    cache = tmp_path / "cache"
    request = ExtractionRequest(str(csv), "pixels-32")
    seen = []
    with pytest.raises(Cancelled):
        with JobRecorder(cache, request) as job:
            def progress(done, total, failed):
                job.downloading(done, total, failed)
                seen.append(read_job(cache, job.id).describe())
                if done == 1:
                    cancel_job(cache, job.id)

            download_missing(load_dataset(csv, columns=columns, cache_dir=cache), workers=1, progress=progress)
    assert seen[0] == "downloading photos: 0/2" and seen[1].startswith("downloading photos: 1/2, ")
    assert read_job(cache, request.id).state == "cancelled"
    data = download_missing(load_dataset(csv, columns=columns, cache_dir=cache))
    assert len(data) == 6 and photo_server.requests == {"tray0.jpg": 1, "tray1.jpg": 1}


def _comparison_request(manifest, cache, heads=("ridge",), *, n_folds=5, key="a key"):
    """A comparison job's request as the dashboard writes it, on the encoders cached in ``cache``."""
    from dataclasses import asdict

    from otolith_core.data import data_signature
    from otolith_core.heads import HeadSpec
    from otolith_core.jobs import ComparisonRequest

    data = load_dataset(manifest)
    ready = {name: extract_embeddings(data, registry()[name], cache_dir=cache, cached_only=True)
             for name in ("otolith-morphometrics", "pixels-32")}
    return ComparisonRequest(data=str(manifest), key=key, data_signature=data_signature(manifest),
                             encoders=tuple(ready), digests={n: e.digest for n, e in ready.items()},
                             heads=tuple(asdict(HeadSpec(h)) for h in heads), n_folds=n_folds, seed=2,
                             failed_encoders={"clip-vit-l-14-336": "weights not here"})


def test_a_comparison_job_cross_validates_in_its_own_process_and_stores_what_compare_gives(
        demo_manifest, demo_cache, tmp_path, monkeypatch):
    """The job (``otolith compare-job``, started detached) stores under the request's key exactly what ``compare``
    gives in-process; its progress names folds and the model at work; the starting process fits nothing."""
    import shutil

    from otolith_core import comparison
    from otolith_core.cache import ResultStore
    from otolith_core.heads import HeadSpec

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    request = _comparison_request(demo_manifest, cache, ("ridge", "svc"))
    real_compare = comparison.compare
    monkeypatch.setattr(comparison, "compare", lambda *a, **k: pytest.fail("the starting process cross-validated"))
    job = start_job(request, cache)
    assert start_job(request, cache).pid == job.pid  # asked for again (a second tab): joined
    seen = set()
    while (status := read_job(cache, request.id)).active:
        seen.add(status.describe())
        time.sleep(0.05)
    assert status.state == "finished", status.log_tail
    assert status.describe() == "finished: 4 models, 20 folds fitted"
    assert any(s.startswith("cross-validating: ") and " folds (" in s for s in seen), seen
    stored = ResultStore(cache).get(request.key)
    data = load_dataset(demo_manifest)
    embeddings = {n: extract_embeddings(data, registry()[n], cache_dir=cache, cached_only=True)
                  for n in request.encoders}
    expected = real_compare(data, embeddings, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=5, seed=2,
                            scalings={n: registry()[n].scaling for n in request.encoders},
                            failed_encoders={"clip-vit-l-14-336": "weights not here"})
    pd.testing.assert_frame_equal(stored.summary_frame(), expected.summary_frame())
    pd.testing.assert_frame_equal(stored.predictions_frame(), expected.predictions_frame())
    assert stored.failed_encoders == {"clip-vit-l-14-336": "weights not here"}


def test_a_comparison_job_reports_each_fold_and_a_cancel_stores_nothing(demo_manifest, demo_cache, tmp_path):
    import shutil

    from otolith_core.cache import ResultStore

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    request = _comparison_request(demo_manifest, cache, ("logistic",), n_folds=10)  # 20 folds, inner CV each
    start_job(request, cache)
    running = _wait(cache, request.id, states=("running",))
    while running.phase != "cross-validating" or running.done < 1:
        assert running.active, running
        time.sleep(0.05)
        running = read_job(cache, request.id)
    assert running.total == 20 and running.detail == "otolith-morphometrics / logistic"
    cancel_job(cache, request.id)
    job = _wait(cache, request.id)
    assert job.state == "cancelled" and job.done < 20 and "(nothing was stored)" in job.describe()
    assert ResultStore(cache).get(request.key) is None


def test_a_comparison_job_refuses_embeddings_that_changed_since_run_was_pressed(demo_manifest, demo_cache, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    request = _comparison_request(demo_manifest, cache)
    changed = replace(request, digests={**request.digests, "pixels-32": "the digest of older embeddings"})
    job = _wait(cache, start_job(changed, cache).id)
    assert job.state == "failed" and "cached embeddings of pixels-32 changed since Run was pressed" in job.reason
    assert "Traceback" not in job.log_tail


def test_jobs_are_forked_from_one_warm_launcher_in_the_askers_folder_and_environment(tmp_path):
    """A job is forked from the launcher (not a child of the process asking), runs in the asker's folder with the
    asker's environment (a relative data path, HF_HUB_OFFLINE given to this job only), and writes to its log; a
    second job is forked from the same launcher, which keeps its socket and has torch loaded (a job with a torch
    encoder does not import it again)."""
    from conftest import write_tiny_photos_manifest
    from otolith_core.launcher import _connect, launcher_address, spawn, start_launcher

    write_tiny_photos_manifest(tmp_path, "path,age\no0.png,3\no1.png,4\n", seed=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start_launcher(env)  # as the dashboard does at its start (it may run already: other tests' jobs started it)
    deadline = time.time() + 120
    while (ready := _connect(launcher_address(env))) is None:
        assert time.time() < deadline, "no launcher ready after 120 s"
        time.sleep(0.2)
    ready.close()
    command = [sys.executable, "-m", "otolith_core.cli", "extract", "--data", "m.csv", "--model",
               "clip-vit-l-14-336", "--cache-dir", str(tmp_path / "cache"), "--weights-dir", str(tmp_path / "hf")]
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        pids = [spawn(command, log=tmp_path / f"log{i}.txt", env=env) for i in range(2)]
    finally:
        os.chdir(here)
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # the launcher's child, not this process's
    assert launcher_address(env).exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:  # asks nothing: the launcher drops it
        client.connect(str(launcher_address(env)))
        launcher, _, _ = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    assert "libtorch" in Path(f"/proc/{launcher}/maps").read_text()
    for i in range(2):
        deadline = time.time() + 60
        while "HF_HUB_OFFLINE is set" not in (text := (tmp_path / f"log{i}.txt").read_text()):
            assert time.time() < deadline, text
            time.sleep(0.1)
        assert f"data: 2 images from {tmp_path / 'm.csv'}" in text


def test_a_launcher_still_importing_is_not_started_twice():
    """Jobs started together (a Run's extractions) while the launcher imports start no second launcher: each would
    import all over again (11 s of CPU with torch)."""
    from otolith_core.launcher import start_launcher

    env = {**os.environ, "OMP_NUM_THREADS": "7"}  # thread settings no running launcher has
    first = start_launcher(env)
    try:
        assert first is not None
        assert start_launcher(env) is None  # ms later: the first is still importing
    finally:
        if first is not None:
            first.terminate()


def test_a_launchers_pid_mark_counts_only_for_the_process_that_wrote_it(tmp_path):
    """The mark beside the socket names the launcher still importing by its pid and start time: a pid reused by
    another process, or a process that has ended, does not count (a second launcher may then start)."""
    from otolith_core.launcher import _importing, _started_at

    address = tmp_path / "launcher.sock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path(f"{address}.pid").write_text(f"{sleeper.pid} {_started_at(sleeper.pid)}")
        assert _importing(address)
        Path(f"{address}.pid").write_text(f"{sleeper.pid} {int(_started_at(sleeper.pid)) - 1}")  # pid reused
        assert not _importing(address)
        Path(f"{address}.pid").write_text(f"{sleeper.pid} {_started_at(sleeper.pid)}")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not _importing(address)  # ended
    Path(f"{address}.pid").write_text(str(sleeper.pid))  # a mark from before this format
    assert not _importing(address)


def test_a_job_that_finds_no_launcher_ready_starts_one_and_runs_as_a_fresh_process_at_once(tmp_path, monkeypatch):
    """Nobody waits for a launcher's imports: a job that finds none ready asks for one (for the jobs after it) and
    starts as a fresh process at once, here while that launcher is still busy importing and never gets ready."""
    from otolith_core import launcher

    asked = []

    def importing(address, env):  # a launcher that is still importing: it never listens in this test
        asked.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return asked[-1]

    monkeypatch.setattr(launcher, "_start_launcher", importing)
    env = {**os.environ, "OMP_NUM_THREADS": "7"}  # thread settings no running launcher has
    started = time.monotonic()
    try:
        pid = launcher.spawn([sys.executable, "-m", "otolith_core.cli", "--help"], log=tmp_path / "log.txt", env=env)
        assert time.monotonic() - started < 10 and pid > 0 and len(asked) == 1
    finally:
        for process in asked:
            process.kill()
    deadline = time.time() + 60
    while "usage: otolith" not in (tmp_path / "log.txt").read_text():
        assert time.time() < deadline
        time.sleep(0.1)
