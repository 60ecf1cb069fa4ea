"""Dataset + encoder + cache -> embedding matrix; and the ``.npz`` format researchers already hold.

``extract_embeddings`` computes only what the cache lacks, one batch per transaction, and reports
images that cannot be decoded or embedded instead of stopping at them. A hub encoder's embeddings
are read from and written to the store of the revision its weights come from (``weights_revision``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .cache import EmbeddingStore, FileHashes, record_key, store_path, store_stamp
from .downloads import recorded_failure
from .data import Dataset, ImageRecord, Skipped, load_images
from .encoders import (PRECISIONS, EncoderSpec, EncoderUnavailable, apply_variant, continues_on, decode_min_side,
                       implementation_for, load_encoder, require_weights_when_offline, resolve_revision)

ProgressCallback = Callable[[int, int, int], None]  # (images done so far, images to extract, of them failed)
# JPEG decoding releases the GIL; more threads than this rarely pay on a laptop. Each thread decodes one photo
# (all its boxes) at a time, so this also bounds the decoded photos held at once.
DECODE_THREADS = 4


@dataclass(frozen=True)
class EmbeddingSet:
    """One encoder's embeddings of (part of) a dataset."""

    encoder: str
    features: np.ndarray  # (n_embedded, dim) float32
    rows: np.ndarray  # (n_embedded,) positions of those images in dataset.records
    failures: tuple[Skipped, ...] = ()  # images that could not be embedded, with reasons
    n_extracted: int = 0  # computed by this call (the rest came from the cache)
    keys: tuple[str, ...] = ()  # (n_embedded,) image identity (content hash + crop); equal keys = same image
    precision: str = "fp32"  # arithmetic the encoder ran in (each precision has its own cache store)
    pending: tuple[str, ...] = ()  # ids of images not embedded yet (``cached_only`` reads); they never failed
    weights_revision: str | None = None  # commit of the hub snapshot the weights came from (None: no hub weights)

    @property
    def complete(self) -> bool:
        """Whether every image is embedded or known to be unusable (nothing is left to extract)."""
        return not self.pending

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def digest(self) -> str:
        """A digest of the features and the rows they belong to: equal digests, the same embeddings."""
        digest = hashlib.blake2b(self.features.tobytes(), digest_size=16)
        digest.update(np.asarray(self.rows, dtype=np.int64).tobytes())
        return digest.hexdigest()


def cached_count(dataset: Dataset, spec: EncoderSpec, *, cache_dir: str | Path, precision: str = "auto",
                 weights_dir: str | Path | None = None) -> int:
    """How many of the dataset's images already have this encoder's embedding (in its fullest store), from the
    hub revision its weights have on this machine (Hugging Face cache ``weights_dir``, default HF's own)."""
    precision = _asked_precision(spec, precision)
    hashes = FileHashes(cache_dir)
    revision, adopt = _revision(spec, weights_dir)
    stores = _existing_stores(cache_dir, spec, hashes, _precisions(precision), revision, adopt)
    try:
        keys, _ = _keys(hashes, dataset.records)
        present = [k for k in keys if k is not None]
        return max((len(present) - len(store.missing(present)) for store in stores), default=0)
    finally:
        for store in stores:
            store.close()
        hashes.close()


def embedding_stamp(spec: EncoderSpec, *, cache_dir: str | Path, precision: str = "auto",
                    weights_dir: str | Path | None = None) -> str:
    """A text that changes whenever this encoder's cached embeddings change, or the hub revision of its weights
    on this machine does (a few file stats, no torch).

    Lets a caller keep a read of the cache until an extraction, here or in another process, writes to it.
    """
    hashes = FileHashes(cache_dir)
    try:
        return store_stamp(cache_dir, spec, hashes, _precisions(_asked_precision(spec, precision)),
                           resolve_revision(spec, weights_dir=weights_dir))
    finally:
        hashes.close()


def extract_embeddings(
    dataset: Dataset,
    spec: EncoderSpec,
    *,
    cache_dir: str | Path,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    weights_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    encoder=None,
    cached_only: bool = False,
) -> EmbeddingSet:
    """Embed every image of ``dataset`` with ``spec``, reusing and filling the cache.

    Parameters
    ----------
    dataset : from :func:`otolith_core.data.load_dataset`.
    spec : from :func:`otolith_core.encoders.resolve_encoder`.
    cache_dir : cache folder; finished batches are kept there even if this call is interrupted.
    device, batch_size, weights_dir : passed to :func:`~otolith_core.encoders.load_encoder`,
        which is called only when something is missing. A hub encoder reads the store of the revision its
        weights have in the Hugging Face cache (``weights_dir``) and fills the store of the revision it
        loaded: a store is only ever continued from the revision it began with (see
        :func:`otolith_core.cache.store_fingerprint`).
    precision : ``auto``, ``fp32``, ``bf16`` or ``fp16``. Each precision has its own store. ``auto``
        reads whichever store of the encoder holds most of the images (ties: fp32, bf16, fp16; no torch
        import), and extracts into that store if the device can run its precision, else into a store of
        the spec's choice for the device. An explicit precision reads and fills only its own store.
    progress : called as ``progress(done, total, failed)`` before the first and after each batch.
    encoder : an already loaded encoder for ``spec`` (a caller may keep one loaded between calls); it follows
        the same precision rule (a copy is switched, the given object is not changed).
    cached_only : return what the cache holds and name the rest, extracting nothing.

    Returns
    -------
    EmbeddingSet with a row per embedded image and the images that failed, with reasons, and the hub revision
    (``weights_revision``) of the store they came from.

    Raises
    ------
    EncoderUnavailable : the encoder is needed and cannot be built (the cache is left as it was).
    """
    precision = _asked_precision(spec, precision)
    hashes = FileHashes(cache_dir)
    revision, adopt = _revision(spec, weights_dir)
    stores = _existing_stores(cache_dir, spec, hashes, _precisions(precision), revision, adopt)
    try:
        keys, failures = _keys(hashes, dataset.records)
        known = [i for i, k in enumerate(keys) if k is not None]
        lookup = [keys[i] for i in known]
        store, features, found = _fullest(stores, lookup)
        # a photo behind a URL not downloaded yet: to do for a look at the cache, unusable for an extraction
        waiting = [r for r, k in zip(dataset.records, keys) if k is None and r.url is not None and not r.path.is_file()]
        failed_downloads = {r.id: recorded_failure(r.path) for r in waiting}
        pending: list[str] = [r.id for r in waiting if not failed_downloads[r.id]] if cached_only else []
        failures += [Skipped.of(r, f"download failed: {failed_downloads[r.id]}") for r in waiting
                     if failed_downloads[r.id]]
        failures += [] if cached_only else [Skipped.of(r, "photo behind a URL, not downloaded") for r in waiting
                                            if not failed_downloads[r.id]]
        if cached_only:
            for i in _missing_positions(known, found):
                reason = store.failure(keys[i]) if store is not None else None
                if reason:
                    failures.append(Skipped.of(dataset.records[i], reason))
                else:
                    pending.append(dataset.records[i].id)
        elif len(found) < len(lookup):
            encoder = _encoder_for(spec, encoder, store if len(found) else None, device, precision, batch_size,
                                   weights_dir)
            loaded = getattr(encoder, "weights_revision", None) or revision  # what computes the numbers now
            if store is None or store.precision != encoder.precision or loaded not in (None, store.revision):
                if loaded != revision:  # a download, or an encoder loaded before the hub cache moved
                    adopt = loaded == resolve_revision(replace(spec, revision=None), weights_dir=weights_dir)
                store = EmbeddingStore(cache_dir, spec, precision=encoder.precision, hashes=hashes, revision=loaded,
                                       adopt=adopt)
                stores.append(store)
                features, found = store.get_many(lookup)
        todo: dict[str, int] = {}
        for i in ([] if cached_only else _missing_positions(known, found)):  # identical files are embedded once
            todo.setdefault(keys[i], i)
        if todo:
            failures += embed_into(store, encoder, [(k, dataset.records[i]) for k, i in todo.items()],
                                   batch_size or encoder.batch_size, progress)
            features, found = store.get_many(lookup)
        rows = np.asarray(known, dtype=int)[found]
        accounted = {f.image for f in failures} | set(pending)
        embedded = set(rows.tolist())
        # A duplicate of a file that failed fails too, under its own name.
        for i in known:
            if i not in embedded and dataset.records[i].id not in accounted:
                failures.append(Skipped.of(dataset.records[i], f"{spec.name}: same content as an image that could not be embedded"))
        return EmbeddingSet(spec.name, features, rows, tuple(failures), n_extracted=len(todo),
                            keys=tuple(lookup[j] for j in found),
                            precision=store.precision if store is not None else "fp32", pending=tuple(pending),
                            weights_revision=store.revision if store is not None else revision)
    finally:
        for open_store in stores:
            open_store.close()
        hashes.close()


def missing_images(dataset: Dataset, spec: EncoderSpec, *, cache_dir: str | Path, precision: str = "auto",
                   weights_dir: str | Path | None = None) -> tuple[dict[str, ImageRecord], str | None]:
    """(the images of ``dataset`` an extraction with ``spec`` would embed now, by cache key (identical files once):
    those the store it would read lacks; that store's precision, None when there is none yet). Photos not
    downloaded and files that cannot be read are left out (an extraction names them). Loads no encoder."""
    precision = _asked_precision(spec, precision)
    hashes = FileHashes(cache_dir)
    revision, adopt = _revision(spec, weights_dir)
    stores = _existing_stores(cache_dir, spec, hashes, _precisions(precision), revision, adopt)
    try:
        keys, _ = _keys(hashes, dataset.records)
        known = [i for i, k in enumerate(keys) if k is not None]
        store, _, found = _fullest(stores, [keys[i] for i in known])
        missing: dict[str, ImageRecord] = {}
        for i in _missing_positions(known, found):
            missing.setdefault(keys[i], dataset.records[i])
        return missing, store.precision if store is not None else None
    finally:
        for store in stores:
            store.close()
        hashes.close()


def embed_into(store, encoder, pending: list, size: int, progress: ProgressCallback | None) -> list[Skipped]:
    """Embed ``pending`` (key, record) pairs batch by batch into ``store`` (an :class:`EmbeddingStore`, or a shard's
    folder: anything with ``spec``, ``put_many`` and ``record_failures``); the images that failed, with reasons (in
    the order of ``pending``).

    The work runs photo by photo: the boxes of one file are decoded together by one thread, so a tray of
    otoliths is decoded once, and batches are filled from the boxes in that order.
    """
    failures: list[Skipped] = []
    total, done = len(pending), 0
    spec = store.spec
    min_side = decode_min_side(spec)
    key_of = {record.id: key for key, record in pending}
    if progress:
        progress(0, total, 0)
    pool = ThreadPoolExecutor(max_workers=DECODE_THREADS)
    try:
        decoded = _decoded_ahead(pool, _by_photo(pending), spec, min_side, ahead=2 * size)
        while batch := list(islice(decoded, size)):
            bad = [item for item in batch if isinstance(item, Skipped)]
            batch_keys, batch_features, unusable = _embed_decoded(
                encoder, [d for d in batch if not isinstance(d, Skipped)])
            bad += unusable
            failures.extend(bad)
            store.record_failures({key_of[f.image]: f.reason for f in bad})
            if batch_keys:
                _check_dim(store.spec, batch_features)
                store.put_many(batch_keys, batch_features)
            done += len(batch)
            if progress:
                progress(done, total, len(failures))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an interrupted run waits only for the photos being decoded
    order = {record.id: n for n, (_, record) in enumerate(pending)}
    return sorted(failures, key=lambda f: order[f.image])


def _by_photo(pending: list) -> list[list]:
    """``pending`` (key, record) pairs grouped by file, files in order of first appearance."""
    photos: dict[Path, list] = {}
    for key, record in pending:
        photos.setdefault(record.path, []).append((key, record))
    return list(photos.values())


def _decoded_ahead(pool: ThreadPoolExecutor, photos: list[list], spec: EncoderSpec, min_side: int, *, ahead: int):
    """Every box of ``photos`` decoded (see :func:`_decode_photo`), in order, decoding running ahead in ``pool``.

    Photos are queued until at least ``ahead`` boxes and one photo per thread wait, so the next batch is ready
    while the encoder works. A thread holds one decoded photo at a time and keeps only its cut boxes: at most
    ``DECODE_THREADS`` photos are decoded at once (45 MP as RGB: 136 MB each).
    """
    queue: deque = deque()
    waiting = 0
    remaining = iter(photos)
    while True:
        while waiting < ahead or len(queue) < DECODE_THREADS:
            photo = next(remaining, None)
            if photo is None:
                break
            queue.append((len(photo), pool.submit(_decode_photo, photo, spec, min_side)))
            waiting += len(photo)
        if not queue:
            return
        n_boxes, future = queue.popleft()
        waiting -= n_boxes
        yield from future.result()


def _asked_precision(spec: EncoderSpec, precision: str) -> str:
    """The precision asked for; built-in extractors compute in numpy float32, whatever was asked."""
    return "fp32" if spec.loader == "builtin" else precision


def _precisions(precision: str) -> tuple[str, ...]:
    """The stores an extraction may read: the asked precision, or any."""
    return PRECISIONS if precision == "auto" else (precision,)


def _revision(spec: EncoderSpec, weights_dir) -> tuple[str | None, bool]:
    """(the hub revision of ``spec``'s weights on this machine or None, whether a store recording none may adopt it).

    A store from before revisions were recorded was filled from what the unpinned name resolved to: a pin adopts
    it only when it names that same commit.
    """
    revision = resolve_revision(spec, weights_dir=weights_dir)
    if revision is None or not spec.revision:
        return revision, True
    return revision, revision == resolve_revision(replace(spec, revision=None), weights_dir=weights_dir)


def _existing_stores(cache_dir, spec: EncoderSpec, hashes: FileHashes, precisions: Sequence[str],
                     revision: str | None = None, adopt: bool = True) -> list[EmbeddingStore]:
    """The stores of ``spec`` in these precisions that exist and serve ``revision`` (none is created here).

    A pinned revision not resolved on this machine names no store: its commit is not known.
    """
    if spec.revision and revision is None:
        return []
    return [EmbeddingStore(cache_dir, spec, precision=p, hashes=hashes, revision=revision, adopt=adopt)
            for p in precisions if store_path(cache_dir, spec, hashes, p, revision, adopt=adopt).is_dir()]


def _fullest(stores: Sequence[EmbeddingStore], lookup: Sequence[str]) -> tuple[EmbeddingStore | None, np.ndarray, np.ndarray]:
    """(store, features, found positions) of the store holding most of ``lookup``; ties go to the first."""
    best: tuple[EmbeddingStore | None, np.ndarray, np.ndarray] = (None, np.zeros((0, 0), dtype=np.float32),
                                                                 np.zeros(0, dtype=int))
    for store in stores:
        features, found = store.get_many(lookup)
        if best[0] is None or len(found) > len(best[2]):
            best = (store, features, found)
        if len(found) == len(lookup):
            break
    return best


def _missing_positions(known: list[int], found: np.ndarray) -> list[int]:
    return [known[j] for j in sorted(set(range(len(known))) - set(found.tolist()))]


def _encoder_for(spec: EncoderSpec, encoder, started: EmbeddingStore | None, device: str, precision: str,
                 batch_size, weights_dir):
    """The encoder to fill the cache with, loaded if none is given.

    With ``precision="auto"`` it continues a store already begun if the device can run that store's
    precision (a given encoder is switched to it; it is not changed in place, and where another implementation
    computes that precision, e.g. CLIP's timm twin under bf16, that one is loaded on the encoder's device).
    """
    if encoder is None:
        require_weights_when_offline(spec, weights_dir=weights_dir)  # before torch is imported
    if precision == "auto" and started is not None:
        where = continues_on(started.precision, encoder.device if encoder is not None else device)
        if where is not None:
            device, precision = where, started.precision
    if encoder is not None and precision not in ("auto", encoder.precision):
        if implementation_for(spec, precision) == encoder.implementation:
            return encoder.with_precision(precision)
        device, encoder = encoder.device, None
    if encoder is None:
        return load_encoder(spec, device=device, precision=precision, batch_size=batch_size, weights_dir=weights_dir)
    return encoder


def _keys(hashes: FileHashes, records: Sequence[ImageRecord]) -> tuple[list[str | None], list[Skipped]]:
    keys: list[str | None] = []
    failures: list[Skipped] = []
    for record in records:
        if record.url is not None and not record.path.is_file():  # not downloaded (yet): the caller says which
            keys.append(None)
            continue
        try:
            keys.append(record_key(record, hashes))
        except OSError as exc:
            keys.append(None)
            failures.append(Skipped.of(record, f"cannot read file: {exc.strerror or exc}"))
    return keys, failures


def _decode_photo(photo: list, spec: EncoderSpec, min_side: int) -> list:
    """For each (key, record) of one file: (key, record, image as the encoder's variant prepares it), or a
    Skipped naming why it cannot be used. The file is decoded once for all its boxes (:func:`load_images`)."""
    out = []
    for (key, record), image in zip(photo, load_images([record for _, record in photo], min_side=min_side)):
        if not isinstance(image, Skipped) and spec.variant:
            try:
                image = apply_variant(image, spec.variant, work_side=min_side)
            except ValueError as exc:
                image = Skipped.of(record, str(exc))
        out.append(image if isinstance(image, Skipped) else (key, record, image))
    return out


def _embed_decoded(encoder, decoded: list) -> tuple[list[str], np.ndarray, list[Skipped]]:
    """Embed one batch of decoded images; an image the encoder cannot use is named and the rest go on."""
    if not decoded:
        return [], np.zeros((0, 0), dtype=np.float32), []
    try:
        return [key for key, _, _ in decoded], _finite(encoder.embed([im for _, _, im in decoded])), []
    except ValueError:
        pass  # one image in the batch is unusable: find it by embedding one at a time
    kept_keys, rows, bad = [], [], []
    for key, record, image in decoded:
        try:
            rows.append(_finite(encoder.embed([image]))[0])
            kept_keys.append(key)
        except ValueError as exc:
            bad.append(Skipped.of(record, f"{encoder.spec.name} cannot use this image: {exc}"))
    features = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return kept_keys, features, bad


def _finite(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if not np.isfinite(features).all():
        raise ValueError("the embedding contains NaN or infinity")
    return features


def _check_dim(spec: EncoderSpec, features: np.ndarray) -> None:
    if spec.embed_dim and features.shape[1] != spec.embed_dim:
        raise EncoderUnavailable(
            f"encoder {spec.name!r} produced {features.shape[1]}-d embeddings but its entry states {spec.embed_dim}; "
            f"fix embed_dim in config.yaml"
        )


# ----------------------------------------------------------------------------------------------------
# .npz exchange: features (n, d), labels (n,), paths (n,) optional.


def save_npz(path: str | Path, dataset: Dataset, embedding: EmbeddingSet) -> Path:
    """Write ``features``, ``labels`` and ``paths`` for the embedded images.

    ``paths`` holds each image's id (its path, with the crop box appended for a crop), so two crops
    of one photo stay two rows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [dataset.records[i] for i in embedding.rows]
    np.savez_compressed(
        path,
        features=embedding.features,
        labels=np.array([r.age for r in records], dtype=int),
        paths=np.array([r.id for r in records], dtype=str),
    )
    return path


def load_npz_embeddings(named_files: dict[str, str | Path]) -> tuple[Dataset, dict[str, EmbeddingSet]]:
    """Read ``{encoder name: file.npz}`` into one dataset and aligned embedding sets.

    With ``paths`` in every file, images are matched by path (those missing from any file are
    skipped with a reason); with ``paths`` in none, all files must list the same images in the same
    order. Files with and without ``paths`` are not mixed.
    """
    import pandas as pd

    loaded = {name: _read_npz(name, Path(file)) for name, file in named_files.items()}
    if not loaded:
        raise ValueError("no embedding files given; use --embeddings NAME=FILE.npz[,NAME2=FILE2.npz]")
    skipped: list[Skipped] = []
    without_paths = [name for name, (_, _, paths) in loaded.items() if paths is None]
    if not without_paths:
        # Hash-index look-ups, not a loop per image: 8,637 images in two files took 2 s that way.
        indexes = {name: pd.Index(paths) for name, (_, _, paths) in loaded.items()}
        common = next(iter(indexes.values()))
        for index in indexes.values():
            common = common[index.get_indexer(common) >= 0]
        take = {name: index.get_indexer(common) for name, index in indexes.items()}
        for name, (_, _, paths) in loaded.items():
            elsewhere = np.ones(len(paths), dtype=bool)
            elsewhere[take[name]] = False
            skipped += [Skipped(paths[i], f"only in some embedding files (not all have it; seen in {name})")
                        for i in np.flatnonzero(elsewhere)]
        images = common.tolist()
    elif len(without_paths) < len(loaded):
        raise ValueError(f"give 'paths' in all embedding files or in none (images are matched by path); "
                         f"these lack it: {without_paths}")
    else:
        lengths = {name: len(y) for name, (_, y, _) in loaded.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"embedding files without 'paths' must have the same number of rows, got {lengths}")
        images = [f"row_{i + 1}" for i in range(next(iter(lengths.values())))]
        take = {name: np.arange(len(images)) for name in loaded}
    first_name = next(iter(loaded))
    ages = loaded[first_name][1][take[first_name]]
    for name, (_, y, _) in loaded.items():
        disagree = np.flatnonzero(y[take[name]] != ages)
        if disagree.size:
            i = disagree[0]
            raise ValueError(f"embedding files disagree on the age of {images[i]!r}: {int(ages[i])} vs "
                             f"{int(y[take[name]][i])} (in {name})")
    sets = {name: EmbeddingSet(name, x[take[name]], np.arange(len(images)), ()) for name, (x, _, _) in loaded.items()}
    records = tuple(ImageRecord(Path(p), p, age) for p, age in zip(images, ages.tolist()))
    source = Path(next(iter(named_files.values()))).resolve()
    dataset = Dataset(source, "embeddings", records, tuple(dict.fromkeys(skipped)))
    return dataset, sets


def _read_npz(name: str, path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if not path.is_file():
        raise FileNotFoundError(f"embedding file for {name!r} not found: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("features", "labels") if k not in data.files]
            if missing:
                raise ValueError(f"{str(path)!r} lacks array(s) {missing}; expected features (n, d), labels (n,), optional paths (n,)")
            x = np.asarray(data["features"], dtype=np.float32)
            y = np.asarray(data["labels"])
            paths = [str(p) for p in data["paths"]] if "paths" in data.files else None
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and "lacks array" in str(exc):
            raise
        raise ValueError(f"cannot read embedding file {str(path)!r}: {exc}") from exc
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{str(path)!r}: features must be (n, d) and labels (n,), got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{str(path)!r}: features contain NaN or infinity")
    if not np.all(np.isfinite(y.astype(float))) or np.any(y.astype(float) != np.round(y.astype(float))) or np.any(y.astype(float) < 0):
        raise ValueError(f"{str(path)!r}: labels must be whole ages >= 0")
    if paths is not None and (len(paths) != len(y) or len(set(paths)) != len(paths)):
        raise ValueError(f"{str(path)!r}: paths must be unique and one per row")
    return x, y.astype(int), paths
