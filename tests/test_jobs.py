"""Extraction jobs: detached processes that outlive whoever started them, can be joined, cancelled and restarted."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from otolith_core.cli import main
from otolith_core.data import load_dataset
from otolith_core.embeddings import cached_count, extract_embeddings
from otolith_core.jobs import Cancelled, JobRecorder, JobRequest, cancel_job, list_jobs, read_job, start_job
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
    request = JobRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=4)
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from otolith_core.jobs import JobRequest, start_job
        start_job(JobRequest({str(demo_manifest)!r}, {f"local-dir:{tiny_model_dir}"!r}, batch_size=4), {str(cache)!r})
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
    request = JobRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=2)
    first = start_job(request, cache)
    second = start_job(JobRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=2), cache)
    assert first.active and second.pid == first.pid
    assert [j.id for j in list_jobs(cache)] == [request.id]
    cancel_job(cache, request.id)
    assert _wait(cache, request.id).state == "cancelled"


def test_cancel_stops_between_batches_and_leaves_a_readable_cache(demo_manifest, tmp_path):
    cache = tmp_path / "cache"
    data = load_dataset(demo_manifest)
    spec = registry()["pixels-32"]
    request = JobRequest(str(demo_manifest), "pixels-32")
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
    request = JobRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}", batch_size=1)
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
    request = JobRequest(str(demo_manifest), "clip-vit-l-14-336", weights_dir=str(tmp_path / "hf"))
    start_job(request, cache)
    job = _wait(cache, request.id)
    assert job.state == "failed" and "not on this machine" in job.reason and "error:" in job.log_tail


def test_a_cancel_before_the_process_has_started_is_honoured(demo_manifest, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    request = JobRequest(str(demo_manifest), f"local-dir:{tiny_model_dir}")
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
    request = JobRequest(str(csv), "pixels-32")
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
