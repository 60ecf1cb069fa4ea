"""Extraction in shards on several machines (a cluster's array of tasks), with the cache as their meeting point.

The submitter *plans*: it hashes the images once (with the cache's memory of file hashes), leaves out those the
cache holds already, and writes each shard's list of images. An image's shard follows from its content hash
alone, so it stays in its shard when rows are added. A *shard* reads only its list and embeds its images batch by
batch into a folder of its own, one ``.npz`` file per batch, written whole or not at all; run again (after a kill
or a preemption) it goes on after its last whole batch. A shard writes nothing into the cache's SQLite files (the
embedding stores, the file hashes, the job records): SQLite is not safe for writers on several machines over NFS.
*Merging* folds the whole batches into the encoder's embedding store after checking each one against the shard's
list (its keys), the encoder identity and the embedding dimension. Merging may run any number of times, also
while shards still run, and two merges at once take turns.

Layout under the cache folder::

    shards/<plan>/plan.json                   data, encoder, precision, device, number of shards
    shards/<plan>/shard-0003/images.json      the shard's images: cache key, path, crop box, id
    shards/<plan>/shard-0003/batch-000012.npz keys, embeddings, the encoder identity; images that failed and why
    shards/<plan>/shard-0003/done             every image of the list is embedded or failed
    shards/<plan>/shard-0003/merged-000012    that batch is in the embedding store
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .cache import EmbeddingStore, FileHashes, encoder_fingerprint
from .data import Dataset, ImageRecord, file_sha256

PLAN_SCHEMA = 1
SHARDS_FOLDER = "shards"
DONE = "done"
ProgressCallback = Callable[[int, int, int], None]


@dataclass(frozen=True)
class ShardPlan:
    """What a set of shards extracts. ``folder`` holds it (``shards/<id>`` in the cache folder)."""

    folder: Path
    data: str  # the folder or manifest, as the submitter read it (for messages)
    encoder: str  # the encoder name as given: registry name, local-dir:..., hf-hub:...
    n_shards: int
    precision: str = "auto"
    device: str = "auto"
    batch_size: int | None = None
    weights_dir: str | None = None
    variant: dict = field(default_factory=dict)  # resolve_encoder's options (a clahe variant's parameters)
    n_images: int = 0  # images listed, over all shards
    # the precision of the store the cache fills for this encoder (precision "auto": a shard continues it when its
    # device can run it, as a one-process extraction does); None: no store yet
    store_precision: str | None = None

    @property
    def id(self) -> str:
        return self.folder.name

    def shard_folder(self, index: int) -> Path:
        return self.folder / f"shard-{index:04d}"

    def spec(self):
        from .encoders import resolve_encoder

        return resolve_encoder(self.encoder, weights_dir=self.weights_dir, **self.variant)

    def images(self, index: int) -> list[dict]:
        """Shard ``index``'s images: ``{"key", "path", "crop", "id", "name"}`` each."""
        return json.loads((self.shard_folder(index) / "images.json").read_text())

    def shard_command(self, index: int) -> list[str]:
        """The command line that runs shard ``index`` (on any machine that sees the cache folder)."""
        import sys

        return [sys.executable, "-m", "otolith_core.cli", "shard", "--plan", str(self.folder), "--index", str(index)]


def shard_of(key: str, n_shards: int) -> int:
    """The shard of an image: from its cache key (its content hash) alone, so adding rows moves no image."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % n_shards


def plan_id(data: str | Path, encoder: str, variant: dict, precision: str, n_shards: int,
            columns: dict | None = None) -> str:
    """The plan's name: the same data (as :func:`~otolith_core.data.data_source` names it), column mapping, encoder,
    precision and number of shards give the same plan, so a rerun of the submitter, or ``otolith extract --shard
    I/N`` with the same options, finds it."""
    from .data import data_source

    named = {"data": str(data_source(data)), "encoder": encoder, "variant": variant, "precision": precision,
             "n_shards": n_shards}
    if columns:  # only when mapped: plans of native manifests keep their names
        named["columns"] = columns
    return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:16]


def plan_shards(dataset: Dataset, encoder: str, *, cache_dir: str | Path, n_shards: int, precision: str = "auto",
                device: str = "auto", batch_size: int | None = None, weights_dir: str | Path | None = None,
                variant: dict | None = None) -> ShardPlan:
    """Write the plan for extracting what the cache lacks of ``dataset`` with ``encoder`` in ``n_shards`` shards.

    The images are hashed here, once (warm: read from the cache's memory of file hashes); the shards read their
    lists and hash nothing. Writing the plan again (rows added, some shards done) keeps every finished batch: an
    image keeps its shard, and a shard whose list gained images is no longer done.
    """
    from .embeddings import missing_images

    if n_shards < 1:
        raise ValueError(f"the number of shards must be at least 1, got {n_shards}")
    variant = {k: v for k, v in (variant or {}).items() if v is not None}
    weights = None if weights_dir is None else str(Path(weights_dir).expanduser().resolve())
    columns = None if dataset.columns.native else asdict(dataset.columns)
    folder = (Path(cache_dir).expanduser().resolve() / SHARDS_FOLDER  # absolute: nodes start elsewhere
              / plan_id(dataset.source, encoder, variant, precision, n_shards, columns))
    plan = ShardPlan(folder, str(dataset.source), encoder, n_shards, precision, device, batch_size, weights, variant)
    missing, store_precision = missing_images(dataset, plan.spec(), cache_dir=cache_dir, precision=precision,
                                              weights_dir=weights_dir)
    plan = ShardPlan(folder, **{**_fields(plan), "store_precision": store_precision})
    lists: list[list[dict]] = [[] for _ in range(n_shards)]
    for key, record in missing.items():  # one entry per content: identical files are embedded once
        lists[shard_of(key, n_shards)].append({"key": key, "path": str(record.path), "crop": record.crop,
                                               "id": record.id, "name": record.name})
    for index, entries in enumerate(lists):
        shard = plan.shard_folder(index)
        shard.mkdir(parents=True, exist_ok=True)
        before = {e["key"] for e in _read_json(shard / "images.json", [])}
        _write_atomically(shard / "images.json", json.dumps(entries))
        if {e["key"] for e in entries} - before:
            (shard / DONE).unlink(missing_ok=True)
    plan = ShardPlan(folder, **{**_fields(plan), "n_images": sum(map(len, lists))})
    _write_atomically(folder / "plan.json", json.dumps({"schema": PLAN_SCHEMA, **_fields(plan)}))
    return plan


def read_plan(folder: str | Path) -> ShardPlan:
    """The plan in ``folder`` (``shards/<id>``)."""
    folder = Path(folder)
    try:
        fields = json.loads((folder / "plan.json").read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"no shard plan in {folder} ({exc}); plan it with `otolith extract --shards N`"
                                ) from exc
    if fields.pop("schema", None) != PLAN_SCHEMA:
        raise ValueError(f"{folder / 'plan.json'} was written by another version of otolith; plan it again")
    return ShardPlan(folder, **fields)


def find_plan(cache_dir: str | Path, data: str | Path, encoder: str, variant: dict, precision: str, n_shards: int,
              columns: dict | None = None) -> ShardPlan:
    """The plan the submitter wrote for these options (``otolith extract --shard I/N`` on a node); a missing one is
    named with the plans that do exist."""
    variant = {k: v for k, v in variant.items() if v is not None}
    root = Path(cache_dir) / SHARDS_FOLDER
    folder = root / plan_id(data, encoder, variant, precision, n_shards, columns)
    if not (folder / "plan.json").is_file():
        known = []
        for plan_file in sorted(root.glob("*/plan.json")):
            try:
                other = read_plan(plan_file.parent)
            except (FileNotFoundError, ValueError):
                continue
            known.append(f"{other.encoder} on {other.data}, precision {other.precision}, {other.n_shards} shards")
        raise FileNotFoundError(f"no shard plan for {encoder} on {data} ({precision}, {n_shards} shards) in {root}: "
                                "run `otolith extract --shards N` with the same options first"
                                + (f"; plans there: {'; '.join(known)}" if known else ""))
    return read_plan(folder)


@dataclass(frozen=True)
class ShardOutcome:
    index: int
    embedded: int  # images of the list embedded, this run and before
    failed: int  # images of the list that could not be used
    extracted: int  # embedded by this run
    total: int


class ShardBusy(RuntimeError):
    """The shard is being run by another process (two runs of one shard would write over each other)."""


def run_shard(folder: str | Path, index: int, *, progress: ProgressCallback | None = None) -> ShardOutcome:
    """Embed the images of shard ``index`` of the plan in ``folder`` that it has not embedded yet (images that
    failed before are tried again, as a one-process extraction does).

    Batches are written whole (a temporary file renamed), so a kill leaves whole batches and at most one temporary
    file, removed at the next run; a batch file that cannot be read is removed and its images embedded again. One
    run of a shard at a time (a lock in its folder; another raises :class:`ShardBusy`). Writes only into the
    shard's own folder.
    """
    from filelock import FileLock, Timeout

    plan = read_plan(folder)
    if not 0 <= index < plan.n_shards:
        raise ValueError(f"shard {index} does not exist: the plan has shards 0..{plan.n_shards - 1}")
    shard = plan.shard_folder(index)
    try:
        with FileLock(str(shard / ".lock"), timeout=0):
            return _run_shard(plan, index, shard, progress)
    except Timeout:
        raise ShardBusy(f"shard {index} of plan {plan.id} is being run by another process; wait for it to end (or "
                        "stop it) before running it again") from None


def _run_shard(plan: ShardPlan, index: int, shard: Path, progress: ProgressCallback | None) -> ShardOutcome:
    from .embeddings import embed_into
    from .encoders import continues_on, load_encoder, resolve_revision

    entries = plan.images(index)
    for partial in shard.glob("*.tmp"):  # a batch being written when the last run was killed (we hold the lock)
        partial.unlink(missing_ok=True)
    done: set[str] = set()
    failed: set[str] = set()
    for path in sorted(shard.glob("batch-*.npz")):
        try:
            keys, failures = batch_keys(path)
        except (OSError, ValueError, KeyError):
            print(f"shard {index}: {path.name} is not a whole batch file; its images are embedded again", flush=True)
            path.unlink(missing_ok=True)
            continue
        done.update(keys)
        failed.update(failures)
    pending = [(e["key"], _record(e)) for e in entries if e["key"] not in done]
    extracted = 0
    if pending:
        spec = plan.spec()
        precision = plan.precision
        if precision == "auto" and plan.store_precision and continues_on(plan.store_precision, plan.device):
            precision = plan.store_precision  # continue the store the cache fills, as one process would
        encoder = load_encoder(spec, device=plan.device, precision=precision, batch_size=plan.batch_size,
                               weights_dir=plan.weights_dir)
        revision = getattr(encoder, "weights_revision", None) or resolve_revision(spec, weights_dir=plan.weights_dir)
        identity = {"fingerprint": encoder_fingerprint(spec, _PlainHashes(), encoder.precision, revision),
                    "precision": encoder.precision, "revision": revision or "", "host": socket.gethostname()}
        store = _ShardStore(shard, spec, identity, next_batch=_next_batch(shard))
        failures = embed_into(store, encoder, pending, plan.batch_size or encoder.batch_size, progress)
        extracted = len(pending) - len(failures)
        failed.update(store.failed_keys)
        done.update(store.written_keys)
    listed = {e["key"] for e in entries}
    outcome = ShardOutcome(index, len(done & listed), len((failed - done) & listed), extracted, len(entries))
    _write_atomically(shard / DONE, json.dumps(asdict(outcome)))
    return outcome


_KEYS_READ: dict[tuple[str, int, int], tuple[list[str], list[str]]] = {}  # batch files never change once written


def batch_keys(path: Path) -> tuple[list[str], list[str]]:
    """(keys embedded, keys that failed) of a batch file, without reading its embeddings; each file is read once
    per process (a job polls its shards every few seconds)."""
    stat = path.stat()
    known = (str(path), stat.st_size, stat.st_mtime_ns)
    if known not in _KEYS_READ:
        with np.load(path, allow_pickle=False) as stored:
            _KEYS_READ[known] = [str(k) for k in stored["keys"]], [str(k) for k in stored["failed"]]
    return _KEYS_READ[known]


@dataclass(frozen=True)
class Batch:
    keys: list[str]
    features: np.ndarray
    failed: list[str]
    reasons: list[str]
    fingerprint: str
    precision: str
    revision: str | None


def read_batch(path: Path) -> Batch:
    with np.load(path, allow_pickle=False) as stored:
        keys = [str(k) for k in stored["keys"]]
        features = np.asarray(stored["features"], dtype=np.float32)
        identity = json.loads(str(stored["identity"]))
        return Batch(keys, features, [str(k) for k in stored["failed"]], [str(r) for r in stored["reasons"]],
                     identity["fingerprint"], identity["precision"], identity["revision"] or None)


class _ShardStore:
    """What :func:`otolith_core.embeddings.embed_into` writes into: one ``.npz`` per call, in the shard's folder."""

    def __init__(self, folder: Path, spec, identity: dict, next_batch: int) -> None:
        self.folder, self.spec, self.identity, self._next = folder, spec, identity, next_batch
        self.written_keys: list[str] = []
        self.failed_keys: list[str] = []

    def put_many(self, keys, features: np.ndarray) -> None:
        self._write(list(keys), np.ascontiguousarray(features, dtype=np.float32), {})
        self.written_keys += list(keys)

    def record_failures(self, reasons: dict[str, str]) -> None:
        if reasons:
            self._write([], np.zeros((0, 0), dtype=np.float32), reasons)
            self.failed_keys += list(reasons)

    def _write(self, keys: list[str], features: np.ndarray, reasons: dict[str, str]) -> None:
        path = self.folder / f"batch-{self._next:06d}.npz"
        self._next += 1
        partial = path.with_name(path.name + ".tmp")
        with open(partial, "wb") as handle:
            np.savez(handle, keys=np.asarray(keys, dtype=str), features=features,
                     failed=np.asarray(list(reasons), dtype=str), reasons=np.asarray(list(reasons.values()), dtype=str),
                     identity=np.asarray(json.dumps(self.identity)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)  # whole or not at all


@dataclass
class MergeReport:
    """What a merge did: images put into the cache, batches merged, and the problems (each names its file)."""

    merged_images: int = 0
    merged_batches: int = 0
    failed_images: int = 0
    problems: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)  # plan ids looked at


def merge_shards(cache_dir: str | Path, *, plans: list[str] | None = None) -> MergeReport:
    """Fold every whole batch of every shard (of ``plans``, default all) into the cache's embedding stores.

    Each batch is checked before it is merged: its keys must be in its shard's list, its embeddings finite and
    of the encoder's dimension, and the encoder identity it was computed with must be the one this machine
    computes for the plan's encoder (the same weights, preprocessing and precision). A batch that fails a check
    is named and set aside (``rejected-batch-*.npz``), so its shard embeds those images again when it next runs.
    Idempotent: a merged batch is marked and not read again; two merges at once take turns (a lock per plan).
    """
    from filelock import FileLock

    from .encoders import ENCODER_ERRORS, error_message

    report = MergeReport()
    root = Path(cache_dir) / SHARDS_FOLDER
    for plan_file in sorted(root.glob("*/plan.json")):
        if plans is not None and plan_file.parent.name not in plans:
            continue
        with FileLock(str(plan_file.parent / "merge.lock")):
            try:
                plan = read_plan(plan_file.parent)
                spec = plan.spec()
            except (FileNotFoundError, ValueError, *ENCODER_ERRORS) as exc:
                why = error_message(exc) if isinstance(exc, ENCODER_ERRORS) else str(exc)
                report.problems.append(f"{plan_file.parent}: {why}")
                continue
            report.plans.append(plan.id)
            _merge_plan(plan, spec, Path(cache_dir), report)
    return report


def _merge_plan(plan: ShardPlan, spec, cache_dir: Path, report: MergeReport) -> None:
    from dataclasses import replace

    from .encoders import resolve_revision

    hashes = FileHashes(cache_dir)
    stores: dict[tuple[str, str | None], EmbeddingStore] = {}
    expected: dict[tuple[str, str | None], str] = {}
    try:
        for index in range(plan.n_shards):
            shard = plan.shard_folder(index)
            try:
                listed = {e["key"] for e in plan.images(index)}
            except (OSError, ValueError) as exc:
                report.problems.append(f"{shard}: no readable list of images ({exc})")
                continue
            for path in sorted(shard.glob("batch-*.npz")):
                mark = shard / f"merged-{path.stem.split('-', 1)[1]}"
                if mark.exists():
                    continue
                try:
                    batch = read_batch(path)
                except (OSError, ValueError, KeyError):
                    report.problems.append(f"{path}: not a whole batch file; left out, its images are extracted again")
                    continue
                which = (batch.precision, batch.revision)
                if which not in expected:
                    expected[which] = encoder_fingerprint(spec, hashes, batch.precision, batch.revision)
                problem = _batch_problem(batch, listed, spec, expected[which])
                if problem:  # set aside (kept to look at): the shard no longer counts it, and embeds its images again
                    rejected = path.with_name(f"rejected-{path.name}")
                    os.replace(path, rejected)
                    report.problems.append(f"{path}: {problem}; set aside as {rejected.name}: the shard embeds its "
                                           "images again when it runs again")
                    continue
                if which not in stores:  # a pinned revision adopts the first store only if it names the same commit
                    adopt = not spec.revision or batch.revision == resolve_revision(replace(spec, revision=None),
                                                                                    weights_dir=plan.weights_dir)
                    stores[which] = EmbeddingStore(cache_dir, spec, precision=batch.precision, hashes=hashes,
                                                   revision=batch.revision, adopt=adopt)
                store = stores[which]
                if batch.keys:
                    store.put_many(batch.keys, batch.features)
                if batch.failed:
                    store.record_failures(dict(zip(batch.failed, batch.reasons)))
                mark.write_text(str(time.time_ns()))
                report.merged_batches += 1
                report.merged_images += len(batch.keys)
                report.failed_images += len(batch.failed)
    finally:
        for store in stores.values():
            store.close()
        hashes.close()


def _batch_problem(batch: Batch, listed: set[str], spec, fingerprint: str) -> str | None:
    """Why a batch must not be merged, or None."""
    stray = [k for k in [*batch.keys, *batch.failed] if k not in listed]
    if stray:
        return f"{len(stray)} image(s) not in its shard's list (e.g. {stray[0]}): a batch of another plan?"
    if batch.fingerprint != fingerprint:
        return (f"computed with another encoder identity than {spec.name} has here (its weights, preprocessing or "
                f"precision {batch.precision} differ)")
    if batch.keys:
        if batch.features.ndim != 2 or batch.features.shape[0] != len(batch.keys):
            return f"{len(batch.keys)} keys but embeddings of shape {batch.features.shape}"
        if spec.embed_dim and batch.features.shape[1] != spec.embed_dim:
            return f"{batch.features.shape[1]}-d embeddings, but {spec.name} gives {spec.embed_dim}-d"
        if not np.isfinite(batch.features).all():
            return "embeddings with NaN or infinity"
    return None


@dataclass(frozen=True)
class ShardState:
    index: int
    images: int  # listed
    embedded: int  # in whole batches
    failed: int
    merged: int  # batches merged
    batches: int
    done: bool


def shard_states(plan: ShardPlan) -> list[ShardState]:
    """Where each shard stands, from its folder alone (the scheduler's view: :mod:`otolith_core.cluster`)."""
    states = []
    for index in range(plan.n_shards):
        shard = plan.shard_folder(index)
        embedded: set[str] = set()
        failed: set[str] = set()
        batches = 0
        for path in shard.glob("batch-*.npz"):
            try:
                keys, failures = batch_keys(path)  # the keys only: the embeddings are not read
            except (OSError, ValueError, KeyError):
                continue
            embedded.update(keys)
            failed.update(failures)
            batches += 1
        states.append(ShardState(index, len(_read_json(shard / "images.json", [])), len(embedded),
                                 len(failed - embedded), len(list(shard.glob("merged-*"))), batches,
                                 (shard / DONE).exists()))
    return states


class _PlainHashes:
    """File hashes without the cache's SQLite memory (a shard must not write it): read once per process."""

    def __init__(self) -> None:
        self._memo: dict[str, str] = {}

    def sha256(self, path) -> str:
        path = os.path.abspath(path)
        if path not in self._memo:
            self._memo[path] = file_sha256(Path(path))
        return self._memo[path]


def _record(entry: dict) -> ImageRecord:
    return ImageRecord(path=Path(entry["path"]), name=entry["name"], age=0,
                       crop=tuple(entry["crop"]) if entry.get("crop") else None, given_id=entry["id"])


def _next_batch(shard: Path) -> int:
    """The next batch number: after every number used so far (batches, those set aside, merge marks)."""
    numbers = [int(p.name.split(".")[0].rsplit("-", 1)[1])
               for pattern in ("batch-*.npz", "rejected-batch-*.npz", "merged-*") for p in shard.glob(pattern)]
    return max(numbers, default=-1) + 1


def _fields(plan: ShardPlan) -> dict:
    """The plan's fields but its folder (plan.json lies in it)."""
    return {name: getattr(plan, name) for name in plan.__dataclass_fields__ if name != "folder"}


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + f".{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
