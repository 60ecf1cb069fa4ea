"""The sidebar every page shares, and the Streamlit-cached wrappers around core calls.

Pages import from here; nothing here computes anything itself. Cached functions take string keys
(dataset hash, encoder fingerprint, head parameters, folds, seed) and skip hashing big arrays, so a
widget that only changes the display never recomputes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from otolith_core.cache import default_cache_dir
from otolith_core.data import Dataset, load_dataset
from otolith_core.heads import HEADS, SCALINGS, HeadSpec
from otolith_core.registry import EncoderSpec, presets, registry, resolve_encoder

DEMO_CHOICE = "Built-in synthetic demo"
PATH_CHOICE = "Folder or CSV manifest"
DEMO_ENCODERS = ("otolith-morphometrics", "pixels-32")
GROUPING = {"kept in one fold when the data has fish_id repeats": None, "always kept in one fold": True,
            "treated as independent images": False}


@dataclass(frozen=True)
class Settings:
    """What the sidebar asks for; a run is keyed by it."""

    data_path: str
    is_demo: bool
    encoders: tuple[str, ...]
    heads: tuple[HeadSpec, ...]
    n_folds: int
    seed: int
    age_range: tuple[int, int] | None
    cache_dir: str
    repeats: int = 1
    group_by_fish: bool | None = None  # None: when the data has several photos of a fish
    learning_curve: bool = False


def cache_dir() -> Path:
    return default_cache_dir()


def demo_manifest() -> Path:
    """The synthetic demo under the cache folder, written on first use."""
    folder = cache_dir() / "demo_data"
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        from otolith_core.demo import write_demo_dataset

        with st.spinner("Writing the synthetic demo data set (first start only, about 10 s)…"):
            write_demo_dataset(folder)
    return manifest


@st.cache_data(show_spinner=False, ttl=2, max_entries=8)
def data_signature(path: str) -> str:
    """Changes when the manifest or any file in the folder changes (stat only; reused for 2 s within a rerun)."""
    from otolith_core.data import data_signature as signature

    return signature(path)


@st.cache_data(show_spinner="Reading the image list…", max_entries=8)
def load_data(path: str, age_range: tuple[int, int] | None, signature: str) -> Dataset:
    return load_dataset(path, age_range=age_range)


@st.cache_data(show_spinner=False, max_entries=64)
def encoder_spec(name: str) -> EncoderSpec:
    return resolve_encoder(name)


def check_data_path(text: str) -> str | None:
    """A clear sentence about what is wrong with a typed path, or None when it can be read."""
    path = Path(text.strip()).expanduser()
    if not text.strip():
        return "Type the path of a folder with one sub-folder per age, or of a CSV manifest."
    if not path.exists():
        return f"`{path}` does not exist on this computer."
    if not os.access(path, os.R_OK):
        return f"`{path}` exists but cannot be read (permissions)."
    if path.is_file() and path.suffix.lower() != ".csv":
        return f"`{path}` is a file but not a .csv manifest."
    return None


def sidebar() -> Settings | None:
    """Draw the shared sidebar and return the current settings (None while the data path is unusable)."""
    sb = st.sidebar
    sb.header("Data")
    preset_path = os.environ.get("OTOLITH_DATA", "")
    choice = sb.radio("Images", [DEMO_CHOICE, PATH_CHOICE], index=1 if preset_path else 0, key="data_choice")
    if choice == DEMO_CHOICE:
        data_path, is_demo = str(demo_manifest()), True
        sb.caption("Synthetic demo: drawn otolith-like images, not real data.")
    else:
        typed = sb.text_input("Folder or manifest path", value=preset_path, key="data_path")
        problem = check_data_path(typed)
        if problem:
            sb.warning(problem)
            return None
        data_path, is_demo = str(Path(typed).expanduser()), False

    known = presets()
    preset = sb.selectbox("Species preset", ["none", *known], key="preset",
                          help="; ".join(f"{k}: {v.get('description', '')}" for k, v in known.items()))
    clip = sb.checkbox("Clip ages to a range", value=preset != "none" and bool(known.get(preset, {}).get("age_range")),
                       key="clip_ages")
    age_range = None
    if clip:
        default = known.get(preset, {}).get("age_range") or [1, 10]
        lo, hi = sb.columns(2)
        age_range = (int(lo.number_input("min age", 0, 100, int(default[0]), key="age_min")),
                     int(hi.number_input("max age", 0, 100, int(default[1]), key="age_max")))
        if age_range[0] > age_range[1]:
            sb.warning("The minimum age must not exceed the maximum.")
            return None

    sb.header("Encoders")
    specs = registry()
    weights = weights_offline_status(tuple(specs))
    cached = cached_counts_for(data_path, age_range, tuple(specs))

    def describe(name: str) -> str:
        where = "built in" if specs[name].loader == "builtin" else \
            ("weights here" if weights[name] else f"download {specs[name].download_size}")
        return f"{name} · cached {cached.get(name, '?')} · {where}"

    default = [n for n in DEMO_ENCODERS] if is_demo else []
    chosen = sb.multiselect("Encoders", list(specs), default=default, key="encoders", format_func=describe)
    extra = sb.text_input("Other OpenCLIP model", key="extra_model", placeholder="ViT-B-32:laion2b_s34b_b79k",
                          help="ARCH:TAG, hf-hub:org/name or local-dir:/path/to/folder")
    encoders = tuple(chosen) + ((extra.strip(),) if extra.strip() else ())

    sb.header("Heads")
    head_names = sb.multiselect("Heads", list(HEADS), default=["ridge", "svc"], key="heads",
                                help="ridge: Ridge(α) with rounded ages; svc: linear SVC(C), one-vs-one; "
                                     "ridge-cv: α chosen inside each training fold")
    alpha = sb.number_input("Ridge α", min_value=0.001, value=6.0, key="alpha")
    c_value = sb.number_input("SVC C", min_value=0.0001, value=0.1, format="%.4f", key="svc_c")
    scaling = sb.selectbox("Feature scaling (fitted per training fold)", list(SCALINGS), index=list(SCALINGS).index("l2"),
                           key="scaling")
    heads = tuple(HeadSpec(h, alpha=float(alpha), C=float(c_value), scaling=scaling) for h in head_names)

    sb.header("Cross-validation")
    n_folds = int(sb.number_input("Folds", min_value=2, max_value=50, value=10, key="folds"))
    seed = int(sb.number_input("Seed", min_value=0, value=0, key="seed"))
    repeats = int(sb.number_input("Repeats (R x k-fold, seeds seed..seed+R-1)", min_value=1, max_value=20, value=1,
                                  key="repeats"))
    grouping = sb.selectbox("Photos of one fish", list(GROUPING), key="grouping",
                            help="Several photos of one fish in both training and test folds inflate every number.")
    curve = sb.checkbox("Learning curve (10 %, 20 %, … of each training fold)", key="learning_curve")
    settings = Settings(data_path, is_demo, encoders, heads, n_folds, seed, age_range, str(cache_dir()),
                        repeats, GROUPING[grouping], curve)
    if sb.button("Run comparison", type="primary", key="run", disabled=not (encoders and heads)):
        st.session_state["run_settings"] = settings
    if run_settings() is not None:
        stale = run_settings() != settings
        sb.caption("Settings changed since the last run: press Run again." if stale else
                   "Results of the last run are on the Results and Errors pages.")
        sb.page_link("views/results.py", label="Open the results", icon=":material/bar_chart:")
    return settings


@st.cache_data(show_spinner=False, ttl=60)
def weights_offline_status(names: tuple[str, ...]) -> dict[str, bool]:
    from otolith_core.feature_extractor import weights_available

    specs = registry()
    return {n: weights_available(specs[n]) for n in names}


def cached_counts_for(data_path: str, age_range: tuple[int, int] | None, names: tuple[str, ...]) -> dict[str, str]:
    """``{encoder: "cached/total"}`` for the sidebar labels (empty when the data cannot be read)."""
    try:
        dataset = load_data(data_path, age_range, data_signature(data_path))
    except (ValueError, FileNotFoundError):
        return {}
    key = data_key(data_path, age_range)
    return {n: f"{cached_count(key, n, dataset, str(cache_dir()))}/{len(dataset)}" for n in names}


def run_settings() -> Settings | None:
    """The settings of the last "Run comparison" press, if any."""
    return st.session_state.get("run_settings")


# ----------------------------------------------------------------------------------------------------
# Embeddings and the comparison, cached by string keys.


def dataset_for(settings: Settings) -> Dataset | None:
    try:
        return load_data(settings.data_path, settings.age_range, data_signature(settings.data_path))
    except (ValueError, FileNotFoundError) as exc:
        st.error(f"Cannot read the data: {exc}")
        return None


def current_data() -> tuple[Settings, Dataset]:
    """The sidebar's settings and their data set; stops the page with a message when there is none."""
    settings = st.session_state.get("settings")
    if settings is None:
        st.info("Choose the images in the sidebar.")
        st.stop()
    dataset = dataset_for(settings)
    if dataset is None:
        st.stop()
    return settings, dataset


def data_key(data_path: str, age_range: tuple[int, int] | None) -> str:
    """String key of a data set as read now (path, age clipping, files' sizes and times)."""
    return f"{data_path}|{age_range}|{data_signature(data_path)}"


@st.cache_data(show_spinner=False, max_entries=64)
def cached_count(key: str, name: str, _dataset: Dataset, cache: str) -> int:
    from otolith_core.embeddings import cached_count as count

    return count(_dataset, encoder_spec(name), cache_dir=cache)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_embeddings(key: str, name: str, n_cached: int, _dataset: Dataset, cache: str):
    """Embeddings straight from the cache; nothing is extracted and no encoder is loaded."""
    from otolith_core.embeddings import extract_embeddings

    return extract_embeddings(_dataset, encoder_spec(name), cache_dir=cache, cached_only=True)


def cached_sets(settings: Settings, dataset: Dataset) -> list:
    """The chosen encoders' embeddings as far as the cache holds them (nothing is extracted)."""
    key = data_key(settings.data_path, settings.age_range)
    sets = []
    for name in settings.encoders:
        try:
            n_cached = cached_count(key, name, dataset, settings.cache_dir)
            if n_cached:
                sets.append(cached_embeddings(key, name, n_cached, dataset, settings.cache_dir))
        except Exception:  # an encoder that cannot even be resolved is reported on the other pages
            continue
    return sets


def duplicate_notes(settings: Settings, dataset: Dataset) -> list[str]:
    """Images with the same content, from the first chosen encoder that has embeddings cached."""
    from otolith_core.evaluation import duplicate_warnings

    for emb in cached_sets(settings, dataset)[:1]:
        images = [dataset.records[i].id for i in emb.rows]
        return duplicate_warnings(emb, emb.rows, images, dataset.ages[emb.rows], [])
    return []


def unusable_images(settings: Settings, dataset: Dataset) -> list:
    """Images the chosen encoders tried and could not use (undecodable, blank, too small), from the cache."""
    rows: dict[str, object] = {}
    for emb in cached_sets(settings, dataset):
        for failure in emb.failures:
            rows.setdefault(failure.image, failure)
    return list(rows.values())


@st.cache_resource(max_entries=1, show_spinner="Loading the encoder…")
def resident_encoder(name: str):
    """The one encoder kept in memory; loading another replaces it."""
    from otolith_core.feature_extractor import load_encoder

    return load_encoder(encoder_spec(name))


def extract_with_progress(settings: Settings, dataset: Dataset, name: str):
    """Extract what the cache lacks, showing images done, rate and ETA; finished batches are kept."""
    import time

    from otolith_core.embeddings import extract_embeddings

    spec = encoder_spec(name)
    bar = st.progress(0.0, text=f"{name}: starting…")
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        rate = done / elapsed if elapsed > 0 and done else 0.0
        eta = (total - done) / rate if rate else float("nan")
        eta_text = f", about {eta:.0f} s left" if rate else ""
        bar.progress(done / max(total, 1), text=f"{name}: {done}/{total} images, {rate:.1f} img/s{eta_text}")

    encoder = None if spec.loader == "builtin" else resident_encoder(name)
    result = extract_embeddings(dataset, spec, cache_dir=settings.cache_dir, progress=progress, encoder=encoder)
    bar.empty()
    cached_count.clear()
    return result


def ensure_embeddings(settings: Settings, dataset: Dataset) -> tuple[dict, dict[str, str]]:
    """Embeddings of every chosen encoder: from the cache, extracted now, or after the user allows a download.

    Returns ``({name: EmbeddingSet}, {name: problem})``; an encoder that fails never stops the others.
    """
    from otolith_core.feature_extractor import EncoderUnavailable, weights_available

    allowed = st.session_state.setdefault("allowed_downloads", set())
    attempted = st.session_state.setdefault("attempted_extractions", set())
    key = data_key(settings.data_path, settings.age_range)
    ready, problems = {}, {}
    for name in settings.encoders:
        try:
            spec = encoder_spec(name)
        except (KeyError, ValueError, FileNotFoundError, EncoderUnavailable) as exc:
            problems[name] = str(exc.args[0] if isinstance(exc, KeyError) else exc)
            continue
        n_cached = cached_count(key, name, dataset, settings.cache_dir)
        try:
            if n_cached < len(dataset) and (key, name) not in attempted:  # images that failed once are not retried
                if not (weights_available(spec) or name in allowed):
                    problems[name] = f"needs a download of {spec.download_size} before it can run"
                    if st.button(f"Download {name} ({spec.download_size}) and extract", key=f"download-{name}"):
                        allowed.add(name)
                        st.rerun()
                    continue
                extract_with_progress(settings, dataset, name)
                attempted.add((key, name))
                n_cached = cached_count(key, name, dataset, settings.cache_dir)
            result = cached_embeddings(key, name, n_cached, dataset, settings.cache_dir)
        except EncoderUnavailable as exc:
            problems[name] = str(exc)
            continue
        if len(result.rows) == 0:
            problems[name] = "no image could be embedded"
            continue
        ready[spec.name] = result
    return ready, problems


@st.cache_data(show_spinner="Cross-validating…", max_entries=16)
def cached_comparison(key: str, _dataset: Dataset, _embeddings: dict, _settings: Settings,
                      problems: tuple[tuple[str, str], ...]):
    """The comparison for ``key`` (data, embeddings, heads, CV settings); computed once per key."""
    from otolith_core.evaluation import compare

    s = _settings
    return compare(_dataset, _embeddings, list(s.heads), n_folds=s.n_folds, seed=s.seed, repeats=s.repeats,
                   group_by_fish=s.group_by_fish, with_learning_curve=s.learning_curve, failed_encoders=dict(problems))


def current_comparison():
    """The comparison for the last Run press, computing only what is not cached yet; None with a message otherwise."""
    settings = run_settings()
    if settings is None:
        st.info("Choose data, encoders and heads in the sidebar, then press **Run comparison**.")
        return None
    dataset = dataset_for(settings)
    if dataset is None:
        return None
    embeddings, problems = ensure_embeddings(settings, dataset)
    for name, problem in problems.items():
        st.warning(f"**{name}** is left out: {problem}")
    if not embeddings:
        st.error("No encoder could be evaluated; see the messages above.")
        return None
    key = "|".join([data_key(settings.data_path, settings.age_range),
                    *(f"{n}:{len(e.rows)}:{float(e.features.sum()):.9g}" for n, e in embeddings.items()),
                    *(repr(h) for h in settings.heads),
                    f"folds={settings.n_folds}|seed={settings.seed}|repeats={settings.repeats}",
                    f"group={settings.group_by_fish}|curve={settings.learning_curve}"])
    try:
        return cached_comparison(key, dataset, embeddings, settings, tuple(sorted(problems.items())))
    except ValueError as exc:
        st.error(f"Cross-validation cannot run: {exc}")
        return None


@st.cache_data(show_spinner=False, max_entries=4000)
def thumbnail(path: str, crop: tuple[int, int, int, int] | None, mtime_ns: int, size: int = 200):
    """A small RGB array of one image (decoded once per file version); None when it cannot be decoded."""
    import numpy as np

    from otolith_core.data import ImageRecord, load_image

    try:
        image = load_image(ImageRecord(Path(path), path, 0, crop=crop), min_side=size)  # JPEGs decoded small
    except ValueError:
        return None
    image.thumbnail((size, size))
    return np.asarray(image)


def show_thumbnail(container, record, caption: str) -> None:
    try:
        mtime = record.path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    pixels = thumbnail(str(record.path), record.crop, mtime)
    if pixels is None:
        container.caption(f"{record.id}: cannot be decoded")
    else:
        container.image(pixels, caption=caption, width="stretch")


def run_json(comparison, settings: Settings) -> bytes:
    """``run.json`` for a dashboard run: the same provenance record as the CLI writes."""
    import json

    from otolith_core.report import provenance

    dataset = dataset_for(settings)
    specs = {}
    for name in settings.encoders:
        try:
            spec = encoder_spec(name)
        except Exception:  # an encoder that failed is listed under failed_encoders already
            continue
        specs[spec.name] = spec
    record = provenance(comparison, dataset, specs, list(settings.heads), cache_dir=settings.cache_dir)
    record["command"] = "streamlit run app.py (dashboard)"
    return json.dumps(record, indent=2, default=str).encode("utf-8")
