"""The embedding cache: the only module that touches diskcache, and the only one that knows key formats.

Layout under the cache folder (``--cache-dir``, ``OTOLITH_CACHE_DIR``, default ``./cache``)::

    embeddings/<encoder-name>-<fingerprint>/   one diskcache per encoder identity
    file_hashes/                               SHA-256 of image and weights files, by path+size+mtime
    results/                                   finished comparisons, by the key of their settings
    jobs/                                      extraction jobs (otolith_core.jobs)
    shards/                                    extraction shards' plans and batch files (otolith_core.shards)

An encoder's *fingerprint* hashes everything that changes its numbers, as named by
:func:`otolith_core.encoders.cache_identity` (model, weights, preprocessing and its variant,
pooling, precision, implementation, decode scale, extractor version). Inside it an image's key is its content hash plus its crop
box, so renamed or moved files are still hits and a changed file is a miss.

Hub weights change under one name when their repo gets a new commit, so every store of a hub encoder
records the revision (the snapshot's commit) its embeddings were computed from, and holds no other: see
:func:`store_fingerprint`.

Every batch is written in one transaction: an interrupted extraction keeps all finished batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .data import ImageRecord, file_sha256
from .encoders import REVISION_PIN, EncoderSpec, cache_identity

SCHEMA_VERSION = 1
RESULTS_SCHEMA = 6  # stored comparisons: 2 added the no-skill baseline and the heads' chosen C and k; 3 covariates;
# 4 the hub revision of each encoder's weights; 5 group and hold-out columns; 6 class weights (HeadSpec, folds.csv)
DEFAULT_CACHE_DIR = "cache"
_META_KEY = "__encoder__"
_REVISION = "weights_revision"  # in a store's metadata: the hub commit its embeddings were computed from
_MATRIX_KEY = "__matrix__"  # the last complete dataset matrix read from this store
_FAILED_PREFIX = "failed:"  # + image key -> why it could not be embedded
_CACHE_SETTINGS = {"eviction_policy": "none", "size_limit": 2**50, "cull_limit": 0}
WRITTEN = "written"  # in an embedding store's folder: the time of its last write (store_stamp reads it)


def default_cache_dir() -> Path:
    """``OTOLITH_CACHE_DIR`` if set, else ``./cache``."""
    return Path(os.environ.get("OTOLITH_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


class FileHashes:
    """SHA-256 of files, remembered by (absolute path, size, mtime) so warm runs read no image bytes.

    Remembered on disk across runs, and in memory within one process (every encoder of a run asks).
    """

    _memo: dict[str, str] = {}

    def __init__(self, cache_dir: str | Path) -> None:
        self._folder = Path(cache_dir) / "file_hashes"
        self._cache = None  # opened at the first hash not remembered in memory: a dashboard rerun opens none

    def sha256(self, path: str | Path) -> str:
        path = os.path.abspath(path)
        stat = os.stat(path)
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        digest = self._memo.get(key) or self._store().get(key)
        if digest is None:
            digest = file_sha256(Path(path))
            self._store().set(key, digest)
        self._memo[key] = digest
        return digest

    def _store(self):
        if self._cache is None:
            import diskcache

            self._cache = diskcache.Cache(str(self._folder), **_CACHE_SETTINGS)
        return self._cache

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def encoder_fingerprint(spec: EncoderSpec, hashes: FileHashes, precision: str = "fp32",
                        revision: str | None = None) -> str:
    """Hex digest of :func:`~otolith_core.encoders.cache_identity`: everything that changes the embeddings.

    ``revision`` names the hub commit in the key; without it, the key of the encoder's first store
    (the only key a store had before revisions were recorded).
    """
    identity = dict(cache_identity(spec, precision=precision, file_sha256=hashes.sha256, revision=revision),
                    schema=SCHEMA_VERSION)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def image_key(content_sha256: str, crop: tuple[int, int, int, int] | None) -> str:
    """Cache key of one image inside an encoder's store: content hash and crop box."""
    return f"{content_sha256}:{'full' if crop is None else ','.join(map(str, crop))}"


def record_key(record: ImageRecord, hashes: FileHashes) -> str:
    """Cache key of one dataset image: its file's content hash and its crop box (reads no bytes when warm)."""
    return image_key(hashes.sha256(record.path), record.crop)


def store_fingerprint(cache_dir: str | Path, spec: EncoderSpec, hashes: FileHashes, precision: str = "fp32",
                      revision: str | None = None, *, adopt: bool = True) -> str:
    """Fingerprint of the store for ``spec``'s embeddings in ``precision`` from hub weights at ``revision``.

    An encoder's first store is keyed without a revision (so the stores written before revisions were
    recorded keep their keys) and records the revision it holds. It serves that revision alone: a store that
    records none yet takes the first revision it is opened with (when ``adopt``: the revision the encoder's
    unpinned name resolves to now, which is the one its embeddings were computed from unless the hub cache
    moved since), and one not begun yet takes the revision that begins it. Any other revision gets a store of
    its own, whose key names it. ``revision`` None (no hub weights, or not known on this machine) means the
    first store, whatever it records. Reads the first store's metadata; creates nothing.
    """
    first = encoder_fingerprint(spec, hashes, precision)
    if revision is None:
        return first
    folder = _folder(cache_dir, spec, first)
    if not folder.is_dir():
        return first
    recorded = _recorded_revision(folder)
    if recorded == revision or (recorded is None and adopt):
        return first
    return encoder_fingerprint(spec, hashes, precision, revision)


def store_path(cache_dir: str | Path, spec: EncoderSpec, hashes: FileHashes, precision: str = "fp32",
               revision: str | None = None, *, adopt: bool = True) -> Path:
    """Folder of the store for ``spec`` run in ``precision`` from hub weights at ``revision`` (see
    :func:`store_fingerprint`; nothing is created)."""
    return _folder(cache_dir, spec, store_fingerprint(cache_dir, spec, hashes, precision, revision, adopt=adopt))


def store_stamp(cache_dir: str | Path, spec: EncoderSpec, hashes: FileHashes, precisions: Sequence[str],
                revision: str | None = None) -> str:
    """Changes whenever any of ``spec``'s stores in these precisions that may serve ``revision`` is written (each
    store's ``written`` mark, rewritten by every write), and whenever the revision does."""
    parts = [f"revision:{revision}"]
    for precision in precisions:
        fingerprints = [encoder_fingerprint(spec, hashes, precision)]
        if revision is not None:
            fingerprints.append(encoder_fingerprint(spec, hashes, precision, revision))
        for fingerprint in fingerprints:
            folder = _folder(cache_dir, spec, fingerprint)
            try:
                parts.append(f"{precision}/{fingerprint[:16]}:{(folder / WRITTEN).read_text()}")
            except OSError:
                continue  # nothing written yet (or by a version before the mark: the same until a write)
    return "|".join(parts)


def results_key(ingredients: dict) -> str:
    """The key a finished comparison is stored under: ``ingredients`` (data, embeddings, heads, each encoder's
    scaling as resolved, CV settings), plus this package's version and the results schema, so a comparison
    computed by another version of the code, or before a registry entry's scaling changed, is never served."""
    from importlib import metadata

    try:
        version = metadata.version("otolith-dashboard")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "unknown"
    named = {**ingredients, "package_version": version, "results_schema": RESULTS_SCHEMA}
    return hashlib.sha256(json.dumps(named, sort_keys=True, default=str).encode()).hexdigest()


def _folder(cache_dir: str | Path, spec: EncoderSpec, fingerprint: str) -> Path:
    """``embeddings/<name>-<fingerprint>``; the name without a pinned revision, so a pin and the name it resolves
    like share their stores."""
    name = spec.name.replace(f"@{REVISION_PIN}{spec.revision}", "", 1) if spec.revision else spec.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60]
    return Path(cache_dir) / "embeddings" / f"{slug}-{fingerprint[:16]}"


def _recorded_revision(folder: Path) -> str | None:
    """The hub revision the store in ``folder`` records, or None (none yet, or no hub weights)."""
    import diskcache

    with diskcache.Cache(str(folder), **_CACHE_SETTINGS) as cache:
        meta = cache.get(_META_KEY)
    return meta.get(_REVISION) if isinstance(meta, dict) else None


class ResultStore:
    """Finished comparisons on disk, by a key naming everything they were computed from.

    So a dashboard restarted, or a browser tab reloaded, shows the last results without computing them again.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        import diskcache

        self._cache = diskcache.Cache(str(Path(cache_dir) / "results"), **_CACHE_SETTINGS)

    def get(self, key: str):
        """The stored value, or None (also when it was written by another version of this code)."""
        try:
            entry = self._cache.get(key)
        except Exception:  # unpicklable after a code change: compute again
            return None
        if not isinstance(entry, dict) or entry.get("schema") != RESULTS_SCHEMA:
            return None
        return entry["value"]

    def put(self, key: str, value) -> None:
        self._cache.set(key, {"schema": RESULTS_SCHEMA, "value": value})

    def close(self) -> None:
        self._cache.close()


class EmbeddingStore:
    """Embeddings of one encoder identity, in one arithmetic precision, from one hub revision:
    ``image key -> float32 vector``.

    ``revision`` (hub weights: the snapshot's commit) chooses the store as :func:`store_fingerprint` says; the
    store records it (``self.revision``: what the store holds, also when opened with None).
    """

    def __init__(
        self, cache_dir: str | Path, spec: EncoderSpec, *, precision: str = "fp32", hashes: FileHashes | None = None,
        revision: str | None = None, adopt: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.spec = spec
        self.precision = precision
        self._owns_hashes = hashes is None
        self.hashes = hashes or FileHashes(cache_dir)
        self._open(store_fingerprint(cache_dir, spec, self.hashes, precision, revision, adopt=adopt), revision, adopt)
        if revision is not None and self.revision != revision:  # begun meanwhile by another process, another revision
            self._cache.close()
            self._open(encoder_fingerprint(spec, self.hashes, precision, revision), revision, adopt)

    def _open(self, fingerprint: str, revision: str | None, adopt: bool) -> None:
        """Open the store keyed by ``fingerprint``: begin it recording ``revision``, or let it adopt ``revision`` if
        it records none yet (both atomic), and read what it records."""
        import diskcache

        self.fingerprint = fingerprint
        self.path = _folder(self.cache_dir, self.spec, fingerprint)
        self._cache = diskcache.Cache(str(self.path), **_CACHE_SETTINGS)
        meta = {"schema": SCHEMA_VERSION, "fingerprint": fingerprint, "encoder": self.spec.as_dict(),
                "precision": self.precision}
        with self._cache.transact():
            self._cache.add(_META_KEY, dict(meta, **({_REVISION: revision} if revision is not None else {})))
            recorded = self._cache.get(_META_KEY)
            if revision is not None and adopt and recorded.get(_REVISION) is None:
                recorded = dict(recorded, **{_REVISION: revision})
                self._cache.set(_META_KEY, recorded)
        self.revision: str | None = recorded.get(_REVISION)

    def keys_for(self, records: Sequence[ImageRecord]) -> list[str]:
        """Cache keys of ``records`` (content hashes are memoised, so this is cheap when warm)."""
        return [record_key(r, self.hashes) for r in records]

    def missing(self, keys: Iterable[str]) -> list[int]:
        """Positions of the keys that have no embedding yet."""
        return [i for i, key in enumerate(keys) if key not in self._cache]

    def get_many(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features ``(n_found, dim)`` float32, positions of the found keys in ``keys``).

        A complete lookup is also kept as one matrix under the digest of its key list, so the next
        run over the same images reads one blob instead of one row per image.
        """
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
        snapshot = self._cache.get(_MATRIX_KEY)
        if snapshot is not None and snapshot["digest"] == digest:
            matrix = np.frombuffer(snapshot["matrix"], dtype=np.float32).reshape(len(keys), -1)
            return matrix, np.arange(len(keys))
        rows, found = [], []
        for i, key in enumerate(keys):
            blob = self._cache.get(key)
            if blob is None:
                continue
            row = np.frombuffer(blob, dtype=np.float32) if isinstance(blob, bytes) and len(blob) % 4 == 0 else None
            if row is None or (self.spec.embed_dim and row.size != self.spec.embed_dim) or not np.isfinite(row).all() \
                    or (rows and row.size != rows[0].size):
                self._cache.delete(key)  # a damaged entry is recomputed, never read
                self._mark_written()
                continue
            rows.append(row)
            found.append(i)
        if not rows:
            return np.zeros((0, self.spec.embed_dim or 0), dtype=np.float32), np.zeros(0, dtype=int)
        matrix = np.stack(rows)
        if len(found) == len(keys):  # entries never change under one key, so a complete matrix stays valid
            self._cache.set(_MATRIX_KEY, {"digest": digest, "matrix": matrix.tobytes()})
        return matrix, np.asarray(found, dtype=int)

    def put_many(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Store one batch atomically: after a crash either all of it is there or none."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or len(keys) != features.shape[0]:
            raise ValueError(f"need one feature row per key, got {len(keys)} keys and shape {features.shape}")
        with self._cache.transact():
            for key, row in zip(keys, features):
                self._cache.set(key, row.tobytes())
        self._mark_written()

    def record_failures(self, reasons: dict[str, str]) -> None:
        """Remember why images could not be embedded (shown again without retrying them)."""
        with self._cache.transact():
            for key, reason in reasons.items():
                self._cache.set(_FAILED_PREFIX + key, reason)
        self._mark_written()

    def _mark_written(self) -> None:
        """Touch the store's ``written`` file after a change of what it holds, for :func:`store_stamp`. (The SQLite
        files themselves change at every opening, reads included, so their times cannot tell a write.)"""
        (self.path / WRITTEN).write_text(str(time.time_ns()))

    def failure(self, key: str) -> str | None:
        """Why this image could not be embedded last time, if it failed."""
        return self._cache.get(_FAILED_PREFIX + key)

    def __len__(self) -> int:
        return sum(1 for k in self._cache.iterkeys() if k not in (_META_KEY, _MATRIX_KEY) and not k.startswith(_FAILED_PREFIX))

    def close(self) -> None:
        self._cache.close()
        if self._owns_hashes:
            self.hashes.close()
