"""Streamlit-cached wrappers around core calls, each keyed by strings that name what its result depends on.

Nothing here draws. A key holds the data set's signature (files' paths, sizes, times), an encoder
name and the stamp of its cache stores (which changes whenever an extraction, here or in a job,
writes), head parameters and CV settings; big arrays are never hashed by Streamlit. So a widget that
only changes the display recomputes nothing, and a finished extraction is seen at the next rerun.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from otolith_core.data import Dataset, ManifestColumns, load_dataset
from otolith_core.embeddings import EmbeddingSet
from otolith_core.encoders import ENCODER_ERRORS, EncoderSpec, error_message, resolve_encoder
from views.state import Settings


@st.cache_resource(show_spinner="Reading the image list…", max_entries=8)  # a resource: 8,637 records are not
# copied at every call (a Dataset is frozen)
def load_data(path: str, age_range: tuple[int, int] | None, signature: str,
              columns: ManifestColumns = ManifestColumns(), cache_dir: str | None = None) -> Dataset:
    """The data set at ``path`` as of ``signature`` (a changed file or download gives a new signature and a new
    read); photos behind URLs are looked for in ``cache_dir`` (downloaded there by extraction jobs, never by the
    page)."""
    return load_dataset(path, age_range=age_range, columns=columns, cache_dir=cache_dir)


def covariate_columns(settings: Settings) -> list[str]:
    """The manifest's extra columns a user may add as covariates: not constant, no id (nearly every value different:
    ``covariates.id_like``), and none that holds the age itself (``covariates.answer_columns``)."""
    try:
        data = dataset(settings)
    except (ValueError, FileNotFoundError):
        return []
    return _covariate_columns(settings.data_key, data)


@st.cache_data(show_spinner=False, max_entries=8)
def _covariate_columns(data_key: str, _data: Dataset) -> list[str]:
    from otolith_core.covariates import answer_columns, id_like

    data = _data
    records = data.records
    columns = dict.fromkeys(k for r in records for k in r.metadata)
    hidden = answer_columns(records, age_column=data.age_column)
    values = {c: [r.metadata.get(c, "") for r in records] for c in columns if c not in hidden}
    return [c for c, texts in values.items() if len(set(texts)) > 1 and not id_like(texts)]


MAX_HOLDOUT_VALUES = 50  # as many folds as the Folds input allows


def fold_columns(settings: Settings) -> tuple[list[str], list[str]]:
    """``(columns a fold may keep together, columns that may be held out value by value)`` of the settings' manifest.

    Either list leaves out the age column and any holding the age, the fish column (the sidebar offers it by name),
    ids (``covariates.id_like``: each image its own group) and constant columns; the path column may group (the
    crops of one tray photo). A hold-out column has 2 to ``MAX_HOLDOUT_VALUES`` values (one fold each). Both are
    empty for a folder of age sub-folders, which has no columns.
    """
    try:
        data = dataset(settings)
    except (ValueError, FileNotFoundError):
        return [], []
    return _fold_columns(settings.data_key, data)


@st.cache_data(show_spinner=False, max_entries=8)
def _fold_columns(data_key: str, _data: Dataset) -> tuple[list[str], list[str]]:
    from otolith_core.covariates import answer_columns, id_like

    data = _data
    if data.kind != "manifest" or not data.records:
        return [], []
    records = data.records
    hidden = answer_columns(records, age_column=data.age_column)
    values = {data.columns.path: [r.name for r in records]}
    values.update({c: [str(r.metadata.get(c, "")).strip() for r in records]
                   for c in dict.fromkeys(k for r in records for k in r.metadata) if c not in hidden})
    grouping = [c for c, texts in values.items() if len(set(texts)) > 1 and not id_like(texts)]
    holdout = [c for c in grouping if c != data.columns.path
               and 2 <= len({t for t in values[c] if t}) <= MAX_HOLDOUT_VALUES]
    return grouping, holdout


@st.cache_data(show_spinner=False, max_entries=16)
def covariates_alone_accuracy(data_key: str, covariates: tuple[str, ...], impute: bool, _data: Dataset) -> float:
    """How many ages the chosen covariates alone read exactly (a quick decision tree: a leaked age column shows);
    raises ValueError naming a column that cannot be a covariate."""
    from otolith_core.covariates import CovariateRequest, covariates_alone_accuracy as accuracy, read_covariates

    table = read_covariates(_data.records, CovariateRequest(covariates, impute), age_column=_data.age_column)
    return accuracy(table, _data.ages)


def dataset(settings: Settings) -> Dataset:
    """The settings' data set, less the images it leaves out (``Settings.excluded``); raises ValueError or
    FileNotFoundError with a readable message."""
    data = load_data(settings.data_path, settings.age_range, f"{settings.data_signature}|{settings.downloads}",
                     settings.columns, settings.cache_dir)
    return _left_out(settings.data_key, data, settings.excluded) if settings.excluded else data


@st.cache_resource(show_spinner=False, max_entries=4)
def _left_out(data_key: str, _data: Dataset, excluded: tuple[tuple[str, str], ...]) -> Dataset:
    from otolith_core.exchange import leave_out

    return leave_out(_data, dict(excluded))[0]


def flagged_unusable(settings: Settings) -> tuple[tuple[str, str], ...]:
    """(image, why) for each image of the settings' data a reader flagged unusable (readings typed on Review),
    read again whenever the readings file changes; () when there is none."""
    from otolith_core.readings import readings_file

    try:
        stat = readings_file(settings.cache_dir).stat()
    except OSError:
        return ()
    plain = replace(settings, excluded=())
    return _flagged_unusable(plain.data_key, (stat.st_mtime_ns, stat.st_size), dataset(plain), settings.cache_dir)


@st.cache_data(show_spinner=False, max_entries=8)
def _flagged_unusable(data_key: str, stamp: tuple[int, int], _data: Dataset, cache_dir: str):
    from otolith_core.exchange import collect_readings, unusable_reasons
    from otolith_core.readings import load_readings, second_readings

    per_reader = collect_readings(_data, second_readings(_data, load_readings(cache_dir), cache_dir=cache_dir))
    return tuple(unusable_reasons(per_reader).items())


@st.cache_data(show_spinner=False, max_entries=64)
def encoder_spec(name: str) -> EncoderSpec:
    return resolve_encoder(name)


def resolve(names) -> tuple[dict[str, EncoderSpec], dict[str, str]]:
    """``({name: spec}, {name: why it cannot be used})`` for the chosen encoder names."""
    specs, problems = {}, {}
    for name in names:
        try:
            specs[name] = encoder_spec(name)
        except ENCODER_ERRORS as exc:
            problems[name] = error_message(exc)
    return specs, problems


@st.cache_data(show_spinner=False, ttl=60)
def weights_here(names: tuple[str, ...]) -> dict[str, bool]:
    """Whether each encoder can run without a download (re-checked every minute)."""
    from otolith_core.encoders import weights_available

    specs, _ = resolve(names)
    return {n: weights_available(spec) for n, spec in specs.items()}


@st.cache_resource(show_spinner=False, max_entries=64)  # a resource: handed out without copying the features
def _cached_read(data_key: str, name: str, stamp: str, _dataset: Dataset, cache_dir: str) -> tuple[EmbeddingSet, str]:
    from otolith_core.embeddings import extract_embeddings

    embedding = extract_embeddings(_dataset, encoder_spec(name), cache_dir=cache_dir, cached_only=True)
    return embedding, embedding.digest


def cached_embeddings(settings: Settings, data: Dataset, names) -> dict[str, tuple[EmbeddingSet, str]]:
    """``{name: (what the cache holds, a digest of its features)}`` for the encoders that resolve.

    Nothing is extracted and no encoder is loaded; unused images are named in ``failures`` and the
    ones not tried yet in ``pending``.
    """
    from otolith_core.embeddings import embedding_stamp

    specs, _ = resolve(names)
    return {name: _cached_read(settings.data_key, name, embedding_stamp(spec, cache_dir=settings.cache_dir), data,
                               settings.cache_dir)
            for name, spec in specs.items()}


def comparison_key(settings: Settings, embeddings: dict[str, tuple[EmbeddingSet, str]]) -> str:
    """Names everything a comparison is computed from: data, each encoder's embeddings and the scaling ``auto``
    resolves to for it (its registry entry), heads, CV settings (``cache.results_key`` adds the code's version)."""
    from otolith_core.cache import results_key

    specs, _ = resolve(tuple(embeddings))
    return results_key({
        "data": settings.data_key,
        "embeddings": [(name, e.precision, len(e.rows), digest) for name, (e, digest) in embeddings.items()],
        "scalings": {name: spec.scaling for name, spec in specs.items()},
        "heads": [repr(h) for h in settings.heads],
        "cv": [settings.n_folds, settings.seed, settings.repeats, settings.group_by_fish, settings.learning_curve],
        "folds": {"group_column": settings.group_column, "holdout_column": settings.holdout_column},
        "combined": [list(group) for group in settings.combined],
        "covariates": [list(settings.covariates), settings.impute_covariates],
    })


@st.cache_resource(show_spinner=False)
def _stored_comparisons() -> dict:
    """Comparisons read from the result store in this dashboard process, by key (a few: each holds its predictions)."""
    return {}


STORED_IN_MEMORY = 8


def stored_comparison(key: str, cache_dir: str):
    """The comparison stored on disk under ``key`` (by a comparison job, this or an earlier dashboard), or None
    while there is none. Read from disk once; a None is not remembered, so a job's result is seen as soon as it
    is stored."""
    from otolith_core.cache import ResultStore

    memory = _stored_comparisons()
    if (cache_dir, key) in memory:
        return memory[cache_dir, key]
    store = ResultStore(cache_dir)
    try:
        comparison = store.get(key)
    finally:
        store.close()
    if comparison is not None:
        while len(memory) >= STORED_IN_MEMORY:
            memory.pop(next(iter(memory)))
        memory[cache_dir, key] = comparison
    return comparison


@st.cache_resource(show_spinner=False, max_entries=256)
def derived(key: tuple, _make: Callable[[], Any]) -> Any:
    """What a page derives from a stored comparison (a chart, a table, the download files), made once per ``key``
    (the comparison's result key, then what else it depends on: a metric, the tie level, ...) and handed out as
    it is, never copied: a caller must not change it. A rerun after a widget change that changes none of these
    (a chart's metric chosen before, a gallery filter) then redraws without computing."""
    return _make()


def _decode(path: str, crop: tuple[int, int, int, int] | None, min_side: int):
    """One image decoded (JPEGs at a reduced scale keeping the shorter side >= ``min_side``); None when it cannot be."""
    from otolith_core.data import ImageRecord, load_image

    try:
        return load_image(ImageRecord(Path(path), path, 0, crop=crop), min_side=min_side)
    except ValueError:
        return None


@st.cache_data(show_spinner=False, max_entries=4000)
def thumbnail(path: str, crop: tuple[int, int, int, int] | None, mtime_ns: int, size: int = 200) -> bytes | None:
    """A small JPEG of one image, decoded and encoded once per file version; None when it cannot be decoded.

    The bytes ``st.image`` makes of the same pixels (an RGB array: JPEG at quality 100), made here once instead of
    at every rerun of every page that shows it: 40 thumbnails cost the Data page about a quarter of its rerun."""
    image = _decode(path, crop, size)
    if image is None:
        return None
    image.thumbnail((size, size))
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=100)
    return encoded.getvalue()


@st.cache_data(show_spinner=False, max_entries=16)
def _decoded(path: str, crop: tuple[int, int, int, int] | None, mtime_ns: int, size: int):
    image = _decode(path, crop, size)
    if image is not None:
        image.thumbnail((2 * size, 2 * size))
    return image


@st.cache_data(show_spinner=False, max_entries=8)
def _equalised(path: str, crop: tuple[int, int, int, int] | None, mtime_ns: int, size: int):
    from otolith_core.encoders.spec import DEFAULT_CLAHE_CLIP_LIMIT, DEFAULT_CLAHE_KERNEL
    from otolith_core.encoders.variants import clahe

    image = _decoded(path, crop, mtime_ns, size)
    return None if image is None else clahe(image, clip_limit=DEFAULT_CLAHE_CLIP_LIMIT, kernel=DEFAULT_CLAHE_KERNEL)


@st.cache_data(show_spinner=False, max_entries=8)
def boxes_drawn(path: str, mtime_ns: int, boxes: tuple[tuple[tuple[int, int, int, int], str], ...],
                width: int = 1400):
    """The photo at ``path``, about ``width`` px wide, with each ``(box, image id)`` drawn on it (boxes in pixels of
    the upright photo); None when it cannot be decoded."""
    from PIL import ImageDraw, ImageFont

    from otolith_core.data import upright_size

    size = upright_size(Path(path))
    photo = _decode(path, None, max(64, width * min(size) // max(size)) if size else width)
    if photo is None or size is None:
        return None
    photo.thumbnail((width, width))
    scale = photo.width / size[0]
    draw = ImageDraw.Draw(photo)
    line = max(2, photo.width // 400)
    font = ImageFont.load_default(size=max(12, photo.width // 70))
    for (x0, y0, x1, y1), label in boxes:
        box = [round(v * scale) for v in (x0, y0, x1, y1)]
        draw.rectangle(box, outline=(255, 200, 0), width=line)
        draw.text((box[0] + line + 2, box[1] + line + 2), label, fill=(255, 200, 0), font=font,
                  stroke_width=2, stroke_fill=(0, 0, 0))
    return photo


def large_image(record, brightness: float, contrast: float, size: int = 900, *, clahe: bool = False):
    """One photo for re-reading, about ``size`` px on its shorter side, with brightness and contrast applied
    (the decoding is cached; the sliders only re-enhance), after CLAHE as the encoders' ``@clahe`` variant does
    it when ``clahe``; None when it cannot be decoded."""
    from PIL import ImageEnhance

    try:
        mtime = record.path.stat().st_mtime_ns
    except OSError:
        return None
    image = (_equalised if clahe else _decoded)(str(record.path), record.crop, mtime, size)
    if image is None:
        return None
    return ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness)).enhance(contrast)


@dataclass(frozen=True)
class Space:
    """One encoder's embeddings of the compared images, as the heads scale them, and their 2-D map."""

    images: list[str]  # (n,) image ids, in the comparison's order
    features: np.ndarray  # (n, dim) after the encoder's own scaling
    coords: np.ndarray  # (n, 2)
    scaling: str


@st.cache_resource(show_spinner="Drawing the embedding map…", max_entries=4)  # a resource: no copy per rerun; each
# holds one encoder's scaled matrix (80 MB for 8,637 x 1,152), so only a few are kept
def _space(data_key: str, name: str, digest: str, method: str, images_key: str, _embedding: EmbeddingSet,
           _records: tuple, _images: tuple[str, ...]) -> Space | None:
    from otolith_core.space import project, scaled

    position = {r.id: i for i, r in enumerate(_records)}
    row_of = {int(row): j for j, row in enumerate(_embedding.rows)}
    if any(position[image] not in row_of for image in _images):
        return None
    features = _embedding.features[[row_of[position[image]] for image in _images]]
    scaling = encoder_spec(name).scaling
    features = scaled(features, scaling)
    return Space(list(_images), features, project(features, method=method), scaling)


def embedding_space(settings: Settings, data: Dataset, name: str, images: list[str], method: str) -> Space | None:
    """The map of ``name``'s embeddings of ``images`` (None when some are not in the cache), computed once."""
    embedding, digest = cached_embeddings(settings, data, [name])[name]
    images_key = hashlib.blake2b("\n".join(images).encode(), digest_size=16).hexdigest()
    return _space(settings.data_key, name, digest, method, images_key, embedding, data.records, tuple(images))


@st.cache_resource(show_spinner="Loading the encoder…", max_entries=2)
def vit_model(name: str):
    """(PatchTower, transform) of an encoder whose weights are here; raises ValueError/EncoderUnavailable."""
    from otolith_core.saliency import load_vit

    return load_vit(encoder_spec(name))


@st.cache_data(show_spinner="Computing the heat map…", max_entries=64)
def heat_map(data_key: str, name: str, digest: str, image: str, mtime_ns: int, _settings: Settings, _data: Dataset):
    """(the photo as the model received it, its HeatMap) for one image, computed once per image and embeddings."""
    from otolith_core.saliency import what_the_encoder_sees

    embedding, _ = cached_embeddings(_settings, _data, [name])[name]
    record = next(r for r in _data.records if r.id == image)
    tower, transform = vit_model(name)
    return what_the_encoder_sees(encoder_spec(name), tower, transform, record, embedding.features,
                                 _data.ages[embedding.rows])
