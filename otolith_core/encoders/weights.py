"""Where an encoder's files are: the Hugging Face cache, a download, or a folder; never hang offline.

No torch here. Every weights-file lookup of the package goes through :func:`local_weights_file`
and :func:`fetch_hub_file`, so the loader and the cache key always name the same file.

Hub files are read at the encoder's pinned revision (``EncoderSpec.revision``), or else at the one the
cache's ``refs/main`` names, as huggingface_hub lays its cache out (``refs/main`` -> ``snapshots/<commit>/``).
:func:`resolve_revision` says which commit that is on this machine: the embeddings' store records it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from .spec import HUB_LOADERS, EncoderSpec, EncoderUnavailable

NETWORK_PROBE_SECONDS = 3.0
# Files that hold a model's weights, in order of preference, per library.
OPEN_CLIP_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_LOCAL_WEIGHTS = OPEN_CLIP_HUB_WEIGHTS + (
    "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin",
)
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what timm's save_for_hf / push_to_hub write
OPEN_CLIP_CONFIG = "open_clip_config.json"
TIMM_CONFIG = "config.json"
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")  # a git commit, as the Hub names snapshots


def config_file(spec: EncoderSpec) -> str:
    """Name of the configuration file a hub repo or folder of this encoder's library holds."""
    return TIMM_CONFIG if spec.family == "timm" else OPEN_CLIP_CONFIG


def weight_files(spec: EncoderSpec) -> tuple[str, ...]:
    if spec.family == "timm":
        return TIMM_WEIGHTS
    return OPEN_CLIP_LOCAL_WEIGHTS if spec.loader == "local-dir" else OPEN_CLIP_HUB_WEIGHTS


def local_weights_file(spec: EncoderSpec) -> Path | None:
    """The weights file of a ``local-dir`` or ``checkpoint`` encoder, or None when it is missing."""
    if spec.loader == "checkpoint":
        path = Path(spec.weights_path or "").expanduser()
        return path if path.is_file() else None
    if spec.loader == "local-dir":
        folder = Path(spec.model_id)
        return next((folder / name for name in weight_files(spec) if (folder / name).is_file()), None)
    return None


def hub_repo(spec: EncoderSpec) -> str | None:
    """The Hugging Face repo holding ``spec``'s weights, or None (built-in, folder, checkpoint, no hub copy)."""
    if spec.loader not in HUB_LOADERS:
        return None
    return spec.weights_repo or (spec.model_id if spec.loader == "hf-hub" else None)


def weights_available(spec: EncoderSpec, *, weights_dir: str | Path | None = None) -> bool:
    """Whether the encoder can be built without a download (no network access, no torch import)."""
    if spec.loader == "builtin":
        return True
    if spec.loader in ("local-dir", "checkpoint"):
        return local_weights_file(spec) is not None
    repo = hub_repo(spec)
    if repo is None:
        return False
    weights = any(cached_hub_file(repo, f, weights_dir, revision=spec.revision) for f in weight_files(spec))
    config_ok = spec.loader != "hf-hub" or cached_hub_file(repo, config_file(spec), weights_dir, revision=spec.revision)
    return weights and bool(config_ok)


def require_weights_when_offline(spec: EncoderSpec, *, weights_dir: str | Path | None = None) -> None:
    """Raise :class:`EncoderUnavailable` at once, with the loader's own advice, when ``spec``'s hub weights are not
    here and the hub is offline: a job says so in a second instead of after importing torch (seconds more). Any
    other case (weights here, a folder or checkpoint, a hub that may be reachable) is left to the loader."""
    repo = hub_repo(spec)
    if repo is None or not hub_offline() or weights_available(spec, weights_dir=weights_dir):
        return
    raise EncoderUnavailable(_missing_message(
        encoder=spec.name, repo=repo, names=list(weight_files(spec)), size=spec.download_size,
        why="HF_HUB_OFFLINE is set", weights_dir=weights_dir, revision=spec.revision))


def resolve_revision(spec: EncoderSpec, *, weights_dir: str | Path | None = None) -> str | None:
    """The commit of the hub snapshot ``spec``'s weights are read from on this machine, or None.

    A pinned full commit hash is its own answer. A pinned branch or tag, or ``main`` when nothing is pinned,
    is read through the Hugging Face cache's refs, exactly as loading the weights reads it (so after a
    download it is the commit downloaded). None: no hub weights (built-in, folder, checkpoint), or none in the
    cache yet. No network access, no torch import.
    """
    repo = hub_repo(spec)
    if repo is None:
        return None
    if spec.revision and COMMIT_HASH.fullmatch(spec.revision):
        return spec.revision
    for name in weight_files(spec):
        found = cached_hub_file(repo, name, weights_dir, revision=spec.revision)
        if found:
            return snapshot_commit(found)
    return None


def snapshot_commit(path: str | Path) -> str | None:
    """The commit of the Hugging Face cache snapshot holding ``path`` (``.../snapshots/<commit>/file``), or None."""
    for folder in Path(path).parents:
        if folder.parent.name == "snapshots":
            return folder.name
    return None


def read_json(path: str | Path, *, encoder: str) -> dict:
    """A model's JSON config, or an error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderUnavailable(f"encoder {encoder!r}: cannot read model config {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise EncoderUnavailable(f"encoder {encoder!r}: model config {str(path)!r} is not a JSON object")
    return data


def cached_hub_file(repo: str, filename: str, weights_dir: str | Path | None, *,
                    revision: str | None = None) -> str | None:
    """Local path of ``filename`` of hub repo ``repo`` at ``revision`` (default: what ``refs/main`` names) if it is
    in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(weights_dir) if weights_dir else None,
                                   revision=revision)
    return found if isinstance(found, str) else None


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = NETWORK_PROBE_SECONDS) -> tuple[bool, str]:
    """Can a TCP connection to the Hugging Face endpoint be opened within ``timeout`` seconds?

    Name lookup has no timeout of its own, so the probe runs in a daemon thread.
    """
    from urllib.request import getproxies

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme) or getproxies().get("all")
    if proxy and not _bypasses_proxy(host):
        proxy_url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or host, proxy_url.port or 8080  # behind a proxy, the proxy must answer
    outcome: list[str] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append("")
        except OSError as exc:
            outcome.append(f"{host} unreachable: {exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return False, f"{host} did not answer within {timeout:.0f} s"
    return outcome[0] == "", outcome[0]


def _bypasses_proxy(host: str) -> bool:
    from urllib.request import proxy_bypass

    try:
        return bool(proxy_bypass(host))
    except OSError:
        return False


def fetch_hub_file(
    repo: str,
    filenames: str | Sequence[str],
    *,
    encoder: str,
    download_size: str = "unknown size",
    weights_dir: str | Path | None = None,
    revision: str | None = None,
) -> str:
    """Local path of the first of ``filenames`` in hub repo ``repo`` at ``revision`` (default: the main branch):
    from the cache, else downloaded.

    Fails within a few seconds, with instructions, when the file is not cached and the hub cannot be
    reached (instead of huggingface_hub's ~25 s of retries per file).

    Raises
    ------
    EncoderUnavailable : not cached and not downloadable now.
    FileNotFoundError : the hub answered and the repo holds none of ``filenames``.
    ValueError : the hub answered and the repo has no such ``revision``.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    names = [filenames] if isinstance(filenames, str) else list(filenames)
    for name in names:
        cached = cached_hub_file(repo, name, weights_dir, revision=revision)
        if cached:
            return cached
    missing = dict(encoder=encoder, repo=repo, names=names, size=download_size, weights_dir=weights_dir,
                   revision=revision)
    if hub_offline():
        raise EncoderUnavailable(_missing_message(why="HF_HUB_OFFLINE is set", **missing))
    ok, why = hub_reachable()
    if not ok:
        raise EncoderUnavailable(_missing_message(why=why, **missing))
    last_error: Exception | None = None
    for name in names:
        try:
            return hf_hub_download(repo, name, cache_dir=str(weights_dir) if weights_dir else None, revision=revision)
        except RevisionNotFoundError as exc:
            raise ValueError(f"encoder {encoder!r}: hub repo {repo!r} has no revision {revision!r} ({exc})") from exc
        except EntryNotFoundError as exc:
            last_error = exc
        except Exception as exc:  # network faults, auth, disk full: all end the same way for the user
            raise EncoderUnavailable(_missing_message(why=f"download failed: {exc}", **missing)) from exc
    raise FileNotFoundError(f"encoder {encoder!r}: hub repo {repo!r} has none of {names}"
                            + (f" at revision {revision!r}" if revision else "") + f" ({last_error})")


def _missing_message(*, encoder: str, repo: str, names: Sequence[str], size: str, why: str,
                     weights_dir: str | Path | None, revision: str | None) -> str:
    from huggingface_hub import constants

    where = weights_dir or constants.HF_HUB_CACHE
    at = f" at revision {revision!r}" if revision else ""
    page = f"https://huggingface.co/{repo}" + (f"/tree/{revision}" if revision else "")
    return (
        f"weights for encoder {encoder!r}{at} ({size}) are not on this machine and cannot be downloaded now ({why}).\n"
        f"  - On a connected machine run `otolith extract --model {encoder} ...` once; weights are cached in {where}.\n"
        f"  - Or download the model's config file and {names[0]} from {page} into one "
        f"folder and use `--model local-dir:/path/to/that/folder`."
    )
