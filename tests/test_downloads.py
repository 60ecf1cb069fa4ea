"""Photos behind URLs: fetched once into the cache, under a lock, failures named with their HTTP status."""

from __future__ import annotations

import hashlib
import json
import sys
import threading

import pytest

from conftest import presigned_query
from otolith_core.downloads import DownloadFailed, Fetch, download_path, fetch, fetch_all, without_query


def _serve(server, name: str, content: bytes) -> str:
    (server.folder / name).write_bytes(content)
    return f"{server.url}/{name}?{presigned_query('sig1')}"


def test_a_photo_is_fetched_once_and_named_by_its_url_without_the_query(photo_server, tmp_path):
    url = _serve(photo_server, "tray 1.jpg", b"photo bytes")
    cache = tmp_path / "cache"
    destination = download_path(cache, url)
    assert destination == download_path(cache, url.replace("sig1", "fresh-signature"))  # a re-export's fresh link
    assert destination.name.endswith("tray_1.jpg") and "Signature" not in str(destination)
    outcomes = fetch_all([Fetch(url, destination)], workers=2)
    assert outcomes == {destination: None} and destination.read_bytes() == b"photo bytes"
    sidecar = json.loads(destination.with_name(destination.name + ".json").read_text())
    assert sidecar["url"] == without_query(url) == f"{photo_server.url}/tray 1.jpg"
    assert sidecar["sha256"] == hashlib.sha256(b"photo bytes").hexdigest() and sidecar["size"] == 11
    fresh = url.replace("sig1", "fresh-signature")
    assert fetch_all([Fetch(fresh, download_path(cache, fresh))]) == {destination: None}
    assert photo_server.requests["tray 1.jpg"] == 1  # the re-export downloaded nothing


def test_failures_are_named_with_their_http_status_and_the_rest_go_on(photo_server, tmp_path):
    good = _serve(photo_server, "a.jpg", b"a")
    expired = f"{photo_server.url}/a.jpg?{presigned_query('sig1', expires=1)}"
    missing = f"{photo_server.url}/gone.jpg?{presigned_query('sig1')}"
    fetches = [Fetch(u, tmp_path / name) for u, name in ((good, "a.jpg"), (expired, "b.jpg"), (missing, "c.jpg"))]
    seen = []
    outcomes = fetch_all(fetches, progress=lambda *counts: seen.append(counts))
    assert outcomes[tmp_path / "a.jpg"] is None and (tmp_path / "a.jpg").read_bytes() == b"a"
    forbidden, gone = outcomes[tmp_path / "b.jpg"], outcomes[tmp_path / "c.jpg"]
    assert forbidden.status == 403 and "expired" in str(forbidden) and "export the manifest again" in str(forbidden)
    assert gone.status == 404 and str(gone).startswith("HTTP 404")
    assert "Signature" not in str(forbidden) + str(gone)
    assert seen[0] == (0, 3, 0) and seen[-1] == (3, 3, 2)
    assert not (tmp_path / "b.jpg").exists() and not list(tmp_path.glob("*.part"))
    assert photo_server.requests["gone.jpg"] == 1  # a 404 is not tried again


def test_two_jobs_asking_for_one_photo_fetch_it_once(photo_server, tmp_path):
    """The second caller waits on the first's lock and then finds the file."""
    url = _serve(photo_server, "t.jpg", b"x" * 1000)
    photo_server.slow = 0.5
    destination = download_path(tmp_path, url)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch(url, destination))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True] and photo_server.requests["t.jpg"] == 1


def test_a_download_killed_half_way_is_fetched_again_whole(photo_server, tmp_path):
    """A kill leaves a .part file (and a lock file) behind; the next run fetches the photo anew."""
    url = _serve(photo_server, "t.jpg", b"complete photo")
    destination = download_path(tmp_path, url)
    destination.parent.mkdir(parents=True)
    destination.with_name(destination.name + ".part").write_bytes(b"compl")
    destination.with_name(destination.name + ".lock").write_text("")
    assert fetch(url, destination) is True and destination.read_bytes() == b"complete photo"


def test_a_timeout_is_named(photo_server, tmp_path):
    url = _serve(photo_server, "slow.jpg", b"x")
    photo_server.slow = 2.0
    with pytest.raises(DownloadFailed, match="timed out") as failure:
        fetch(url, tmp_path / "slow.jpg", timeout=0.3, attempts=1)
    assert failure.value.retry


def test_object_stores_go_through_fsspec_and_name_a_missing_back_end(tmp_path, monkeypatch):
    """``s3://`` through fsspec (here a memory file system registered for the scheme; s3fs in real use) with
    credentials from the back end's environment; ``gs://`` without gcsfs says which extra to install."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    class FakeS3(MemoryFileSystem):
        protocol = ("s3",)
        store, pseudo_dirs = {}, [""]

    monkeypatch.setitem(_registry, "s3", FakeS3)  # undone after the test
    with fsspec.open("s3://lab-bucket/trays/t.jpg", "wb") as handle:
        handle.write(b"s3 photo")
    destination = download_path(tmp_path, "s3://lab-bucket/trays/t.jpg")
    assert fetch("s3://lab-bucket/trays/t.jpg", destination) and destination.read_bytes() == b"s3 photo"
    with pytest.raises(DownloadFailed, match="no such object"):
        fetch("s3://lab-bucket/trays/none.jpg", tmp_path / "none.jpg")
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(DownloadFailed, match=r"gs:// needs gcsfs: install otolith-dashboard\[gcs\]"):
        fetch("gs://lab-bucket/t.jpg", tmp_path / "g.jpg")


def test_a_failure_is_recorded_for_whoever_did_not_fetch_and_forgotten_once_fetched(photo_server, tmp_path):
    """The dashboard never downloads: it learns from the record why a job could not fetch a photo."""
    from otolith_core.downloads import recorded_failure

    url = f"{photo_server.url}/later.jpg?{presigned_query('sig1')}"
    destination = download_path(tmp_path, url)
    assert recorded_failure(destination) is None
    fetch_all([Fetch(url, destination)])
    assert recorded_failure(destination).startswith("HTTP 404")
    (photo_server.folder / "later.jpg").write_bytes(b"here now")
    assert fetch(url, destination) and recorded_failure(destination) is None
