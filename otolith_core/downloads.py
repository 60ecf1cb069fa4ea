"""Photos behind URLs (``http(s)://``, ``s3://``, ``gs://``), fetched once into the cache folder.

A lab's export names its photos by URL, often presigned S3 links whose signature and expiry change with every
export. A photo is stored under ``<cache>/downloads/`` by its URL *without* the query string (:func:`download_path`),
so a re-export with fresh signatures finds every photo already there and downloads nothing. Each stored photo
has a sidecar ``.json`` with the URL it came from (no query string), its size and its SHA-256: its identity.

Downloads go through fsspec, the ecosystem's file-system layer: ``http(s)`` with aiohttp (installed with the
dashboard), ``s3://`` with s3fs and ``gs://`` with gcsfs (the optional extras ``otolith-dashboard[s3]`` and
``[gcs]``). Credentials come from each back end's usual environment (``AWS_*`` variables or ``~/.aws``, Google's
application-default credentials), never from the CSV.

Several files are fetched at once (threads). Each file is fetched under a lock of its own, into a ``.part`` file
renamed when complete: two jobs asking for one photo (two encoders' extractions) fetch it once, the second
waits and finds it there; a killed download leaves no half photo behind, and the next run fetches what is
missing (whole files: a photo half fetched is fetched again from its start). A failure (HTTP 403 of an expired
link, 404, a timeout) is reported per URL with its HTTP status, and the rest go on.

Nothing here knows about data sets or records; :func:`otolith_core.data.download_missing` calls this.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence
from urllib.parse import unquote, urlsplit

URL_SCHEMES = ("http://", "https://", "s3://", "gs://")
DOWNLOAD_FOLDER = "downloads"
WORKERS = 8  # files fetched at once
TIMEOUT_SECONDS = 60.0  # to connect, and between two chunks of one file
ATTEMPTS = 3  # a timeout, a dropped connection or a server error (HTTP 5xx) is tried again, after 1 s, then 2 s
EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}  # scheme -> (its fsspec back end, our extra holding it)
_HTTP_HINTS = {
    401: "the link needs credentials",
    403: "access denied: a presigned link that has expired gives this; export the manifest again for fresh links",
    404: "no such file at that address",
    410: "the file is gone",
}

Progress = Callable[[int, int, int], None]  # (files done, files in all, files failed)


class DownloadFailed(Exception):
    """A URL that could not be fetched; ``str()`` names why (the HTTP status when there is one), never the query."""

    def __init__(self, reason: str, status: int | None = None, *, retry: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.retry = retry


def is_url(text: str) -> bool:
    return text.strip().lower().startswith(URL_SCHEMES)


def without_query(url: str) -> str:
    """The URL without its query string and fragment: how a photo behind a URL is named and stored."""
    return url.strip().split("#", 1)[0].split("?", 1)[0]


def download_path(cache_dir: str | Path, url: str) -> Path:
    """Where the photo at ``url`` is (or will be) stored: named by the URL without its query string, the file's
    own name and extension kept (the decoder reads the extension)."""
    name = without_query(url)
    digest = hashlib.sha256(name.encode()).hexdigest()[:20]
    leaf = unquote(PurePosixPath(urlsplit(name).path).name) or "photo"
    leaf = re.sub(r"[^A-Za-z0-9._-]+", "_", leaf)[-120:]
    return Path(cache_dir) / DOWNLOAD_FOLDER / digest[:2] / f"{digest}-{leaf}"


@dataclass(frozen=True)
class Fetch:
    """One file to fetch: the URL as given (a presigned link keeps its query string) and where it goes."""

    url: str
    destination: Path


def failure_path(destination: Path) -> Path:
    """Where the last failed try to fetch ``destination`` is recorded (removed when a fetch succeeds)."""
    destination = Path(destination)
    return destination.with_name(destination.name + ".failed.json")


def recorded_failure(destination: Path) -> str | None:
    """Why the last try to fetch ``destination`` failed, when it is not there (None: never tried, or fetched), so
    that a process that did not fetch (the dashboard) can say why a photo is missing."""
    if Path(destination).is_file():
        return None
    try:
        return json.loads(failure_path(destination).read_text(encoding="utf-8"))["reason"]
    except (OSError, ValueError, KeyError):
        return None


def fetch_all(fetches: Sequence[Fetch], *, workers: int = WORKERS, timeout: float = TIMEOUT_SECONDS,
              progress: Progress | None = None) -> dict[Path, DownloadFailed | None]:
    """Fetch each file that is not at its destination yet, ``workers`` at a time.

    Returns
    -------
    For each destination: None when the file is there (fetched now or before), or the :class:`DownloadFailed`
    naming why not. ``progress(done, total, failed)`` is called before the first file and after each.
    """
    unique = list({f.destination: f for f in fetches}.values())
    outcomes: dict[Path, DownloadFailed | None] = {}
    failed = 0
    if progress:
        progress(0, len(unique), 0)
    if not unique:
        return outcomes
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
        futures = {pool.submit(fetch, f.url, f.destination, timeout=timeout): f.destination for f in unique}
        try:
            for future in as_completed(futures):
                destination = futures[future]
                try:
                    future.result()
                    outcomes[destination] = None
                except DownloadFailed as exc:
                    outcomes[destination] = exc
                    failed += 1
                if progress:
                    progress(len(outcomes), len(unique), failed)
        except BaseException:  # a cancel or Ctrl-C: files not started are not started; finished ones are kept
            for future in futures:
                future.cancel()
            raise
    return outcomes


def fetch(url: str, destination: Path, *, timeout: float = TIMEOUT_SECONDS, attempts: int = ATTEMPTS) -> bool:
    """Fetch ``url`` to ``destination`` unless it is there; True when this call fetched it.

    Under a lock of the destination's own, so a second caller waits for the first and then finds the file.
    Raises :class:`DownloadFailed` naming why the file cannot be fetched.
    """
    from filelock import FileLock

    destination = Path(destination)
    if destination.is_file():
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(destination) + ".lock"):
        if destination.is_file():  # fetched by another job while this one waited
            return False
        part = destination.with_name(destination.name + ".part")
        for attempt in range(1, attempts + 1):
            try:
                size, sha256 = _fetch_once(url, part, timeout)
                break
            except DownloadFailed as exc:
                part.unlink(missing_ok=True)
                if not exc.retry or attempt == attempts:
                    _record_failure(destination, exc)
                    raise
                time.sleep(attempt)
        os.replace(part, destination)
        sidecar = {"url": without_query(url), "size": size, "sha256": sha256, "fetched": time.time()}
        Path(str(destination) + ".json").write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
        failure_path(destination).unlink(missing_ok=True)
    return True


def _record_failure(destination: Path, failure: DownloadFailed) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        failure_path(destination).write_text(json.dumps({"reason": str(failure), "status": failure.status,
                                                         "when": time.time()}), encoding="utf-8")
    except OSError:
        pass  # the failure is still reported to the caller


def _fetch_once(url: str, part: Path, timeout: float) -> tuple[int, str]:
    """One try: the file written to ``part``; (its size, its SHA-256)."""
    from fsspec.callbacks import Callback

    name = without_query(url)
    scheme = name.split("://", 1)[0].lower()
    announced: list[int | None] = [None]

    class Size(Callback):
        def set_size(self, size):
            announced[0] = size

    try:
        fs, remote = _filesystem(url, timeout)
        fs.get_file(remote, str(part), callback=Size())
    except DownloadFailed:
        raise
    except ImportError as exc:
        package, extra = EXTRAS.get(scheme, ("a file-system back end", scheme))
        raise DownloadFailed(f"{scheme}:// needs {package}: install otolith-dashboard[{extra}]") from exc
    except Exception as exc:  # noqa: BLE001 - each back end raises its own; named below, the query never shown
        raise _failure(exc, url, scheme) from exc
    size = part.stat().st_size
    if announced[0] is not None and size != announced[0]:
        raise DownloadFailed(f"download cut short: {size} of {announced[0]} bytes arrived", retry=True)
    if size == 0:
        raise DownloadFailed("the address gave an empty file")
    digest = hashlib.sha256()
    with open(part, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return size, digest.hexdigest()


def _filesystem(url: str, timeout: float):
    """(fsspec file system, path on it) for ``url``: http(s) with the URL exactly as given (a signature must not
    be re-encoded), object stores by their path without a query string."""
    import fsspec

    name = without_query(url)
    scheme = name.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        import aiohttp

        from urllib.parse import quote

        client = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)}
        # sent as written (a signature's %2B must stay as it is), only characters a URL cannot hold (spaces) quoted
        exact = quote(url.strip(), safe=":/?#[]@!$&'()*+,;=%~")
        return fsspec.filesystem(scheme, client_kwargs=client, encoded=True), exact
    return fsspec.core.url_to_fs(name)


def _failure(exc: BaseException, url: str, scheme: str) -> DownloadFailed:
    """What went wrong, in words, with the HTTP status when there is one; the URL's query string never appears."""
    import asyncio

    status = getattr(exc, "status", None)
    if isinstance(status, int):
        hint = _HTTP_HINTS.get(status) or ("a server error; tried again" if status >= 500 else "")
        message = _scrubbed(str(getattr(exc, "message", "") or ""), url)[:120]
        return DownloadFailed(f"HTTP {status}{' ' + message if message else ''}" + (f" ({hint})" if hint else ""),
                              status, retry=status >= 500 or status == 429)
    if isinstance(exc, FileNotFoundError):
        status = 404 if scheme in ("http", "https") else None
        return DownloadFailed("HTTP 404 (no such file at that address)" if status else "no such object", status)
    if isinstance(exc, PermissionError):
        return DownloadFailed(f"access denied (credentials come from the usual {scheme} environment, not the CSV)")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "timeout" in type(exc).__name__.lower():
        return DownloadFailed("timed out (no answer within the time allowed); tried again", retry=True)
    text = _scrubbed(str(exc), url)
    connection = "connect" in type(exc).__name__.lower() or isinstance(exc, ConnectionError)
    return DownloadFailed(f"{'cannot connect' if connection else 'download failed'}: {type(exc).__name__}: {text}",
                          retry=connection)


_SECRET = re.compile(r"(?i)(signature|awsaccesskeyid|x-amz-[a-z-]+|token|key|sig|expires)=[^&\s'\"]*")


def _scrubbed(text: str, url: str) -> str:
    """``text`` (a back end's message) with the URL's query string and anything like a signature cut out."""
    query = url.strip().split("?", 1)[1] if "?" in url else ""
    if query:
        text = text.replace(query, "…")
    return _SECRET.sub(lambda m: f"{m.group(1)}=…", text)
