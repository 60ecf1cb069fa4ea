"""The dashboard's memory: typed accessors over ``st.session_state``, and its mirror in the page's URL.

Every page reads the settings, the requested run and the download consents through the functions here,
never through string keys of its own. The sidebar's widget values are mirrored into the URL's query
parameters, so a reloaded tab (a new session) or a shared link restores every choice, typed model
names included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import streamlit as st

from otolith_core.data import ManifestColumns
from otolith_core.heads import HeadSpec
from otolith_core.ties import TIE_LEVEL

_SETTINGS = "settings"
_REQUESTED = "requested_run"
_CONSENTS = "allowed_downloads"
_RESTORED = "restored_from_url"
_JOBS_SEEN = "jobs_seen_running"
_RUN_PRESSED = "run_pressed"
# Each setting's value as last drawn, kept under a key no widget has: the status area's self-refreshing fragment
# (run_every) can make Streamlit evict the widgets' own state when its run meets a page change (streamlit#10805).
_KEPT = "kept:"
RUN_PARAM = "run"  # in the URL: a run was requested for the settings it holds


@dataclass(frozen=True)
class Settings:
    """What the sidebar asks for; a run is keyed by it."""

    data_path: str
    data_signature: str  # changes whenever the images or the manifest change (otolith_core.data.data_signature)
    is_demo: bool
    encoders: tuple[str, ...]
    heads: tuple[HeadSpec, ...]  # each with its parameters, scaling and class weight: a run is keyed by them
    n_folds: int
    seed: int
    age_range: tuple[int, int] | None
    cache_dir: str
    repeats: int = 1
    group_by_fish: bool | None = None  # None: when the data has several photos of a fish
    learning_curve: bool = False
    combined: tuple[tuple[str, ...], ...] = ()  # groups of chosen encoders also evaluated concatenated ("A + B")
    covariates: tuple[str, ...] = ()  # manifest columns added as features (rows "covariates", "A + covariates")
    impute_covariates: bool = False  # blanks take the training fold's median instead of skipping the image
    columns: ManifestColumns = ManifestColumns()  # which manifest columns hold the path, age, fish, box and id
    group_column: str | None = None  # a manifest column whose values the folds keep together (instead of the fish)
    holdout_column: str | None = None  # leave-one-group-out over this column's values (then n_folds is not used)
    downloads: str = ""  # where the downloads of photos behind URLs stand (otolith_core.data.download_signature)
    tie_level: float = TIE_LEVEL  # Results marks the models tied with the best at this level (changes no number)
    excluded: tuple[tuple[str, str], ...] = ()  # (image, why) left out: flagged unusable by a reader (sidebar switch)

    @property
    def data_key(self) -> str:
        """The data set as read now: path, age clipping, column mapping, the files' signature (which also names
        the mapping) and the downloads so far (a photo downloaded, or failed, changes what is read)."""
        mapping = "" if self.columns.native else f"|{self.columns}"
        downloads = f"|{self.downloads}" if self.downloads else ""  # keys of data without URLs stay as they were
        left_out = ""
        if self.excluded:
            import hashlib

            left_out = "|excluded:" + hashlib.sha256(repr(self.excluded).encode()).hexdigest()[:16]
        return f"{self.data_path}|{self.age_range}|{self.data_signature}{mapping}{downloads}{left_out}"

    def same_run_as(self, other: "Settings | None") -> bool:
        """Whether ``other`` asks for the same run: equal but for downloads made since (a run's own extraction
        jobs download its photos; that must not turn the run it was started for into an old one) and for the tie
        level (it only marks the results: the run follows it without being computed again)."""
        if other is None:
            return False
        return replace(self, downloads="", tie_level=TIE_LEVEL) == replace(other, downloads="", tie_level=TIE_LEVEL)


def settings() -> Settings | None:
    """The sidebar's settings of this script run (None while the data path is unusable)."""
    return st.session_state.get(_SETTINGS)


def set_settings(value: Settings | None) -> None:
    st.session_state[_SETTINGS] = value


def requested_run() -> Settings | None:
    """The settings of the last "Run comparison" press, if any."""
    return st.session_state.get(_REQUESTED)


def request_run(value: Settings) -> None:
    st.session_state[_REQUESTED] = value


def press_run() -> None:
    """The Run button's callback. Callbacks run before the script does, so the press is kept here even when the
    script run that carries it is cut short (the page rerunning itself when a job ends, a timer's rerun)."""
    st.session_state[_RUN_PRESSED] = True


def take_run_press() -> bool:
    """Whether Run was pressed since the last call (the press is then consumed)."""
    return bool(st.session_state.pop(_RUN_PRESSED, False))


def download_allowed(encoder: str) -> bool:
    """Whether the user agreed to download this encoder's weights in this session."""
    return encoder in st.session_state.get(_CONSENTS, set())


def allow_download(encoder: str) -> None:
    st.session_state.setdefault(_CONSENTS, set()).add(encoder)


# Where extraction jobs run (the Embeddings page's choice): executor name -> how the page names it
EXTRACTION_PLACES = {"": "on this machine, in one process", "local": "in shards, as processes on this machine",
                     "slurm": "in shards, as a SLURM job array (submitit)", "ray": "in shards, as Ray tasks"}


@dataclass(frozen=True)
class ExtractionPlace:
    """Where the extraction jobs started from now on run: one process (``shards`` None) or shards on ``executor``."""

    shards: int | None = None
    executor: str = "local"
    cluster_config: str | None = None


def initial(key: str, value) -> str:
    """Give a widget its starting value through the session state (where the URL's values also go), never
    through the widget's own default, which Streamlit would then report as a conflict."""
    st.session_state.setdefault(key, value)
    return key


def extraction_place() -> ExtractionPlace:
    where = st.session_state.get("extract_where") or ""
    if where not in EXTRACTION_PLACES or not where:
        return ExtractionPlace()
    config = (st.session_state.get("extract_cluster_config") or "").strip() or None
    return ExtractionPlace(max(1, int(st.session_state.get("extract_shards") or 1)), where,
                           config if where != "local" else None)


def jobs_seen_running() -> set[str]:
    """Ids of the jobs this session last saw running (so it notices when one ends)."""
    return set(st.session_state.get(_JOBS_SEEN, set()))


def set_jobs_seen_running(ids: set[str]) -> None:
    st.session_state[_JOBS_SEEN] = set(ids)


# ----------------------------------------------------------------------------------------------------
# The URL mirror: widget key -> how its value is written to and read from a query parameter.

_TEXT: tuple[Callable[[Any], str], Callable[[str], Any]] = (str, str)
_INT = (str, int)
_FLOAT = (lambda v: f"{v:g}", float)
_BOOL = (lambda v: "1" if v else "0", lambda s: s == "1")
URL_FIELDS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "data_choice": _TEXT, "data_path": _TEXT, "preset": _TEXT, "clip_ages": _BOOL, "age_min": _INT, "age_max": _INT,
    "extra_model": _TEXT, "alpha": _FLOAT, "svc_c": _FLOAT, "scaling": _TEXT, "class_weight": _TEXT, "folds": _INT,
    "seed": _INT,
    "repeats": _INT, "grouping": _TEXT, "holdout": _TEXT, "learning_curve": _BOOL, "impute_covariates": _BOOL,
    "tie_level": _FLOAT, "exclude_unusable": _BOOL,
    "extract_where": _TEXT, "extract_shards": _INT, "extract_cluster_config": _TEXT,
    "col_path": _TEXT, "col_age": _TEXT, "col_fish": _TEXT, "col_box": _TEXT, "col_box_format": _TEXT, "col_id": _TEXT,
}
URL_LISTS = ("encoders", "variants", "combine", "covariates", "heads")  # multiselects: one query parameter per chosen value


def restore_from_url(options: Mapping[str, list]) -> bool:
    """Once per session, before any widget is drawn: put the URL's values into the widgets' state.

    ``options`` lists the valid values of choice widgets; a value that is no longer offered (an encoder
    removed from the registry) is dropped rather than failing the page. Returns whether the URL asked
    for a run.
    """
    if st.session_state.get(_RESTORED):
        return False
    st.session_state[_RESTORED] = True
    params = st.query_params
    for key, (_, parse) in URL_FIELDS.items():
        if key in params:
            try:
                value = parse(params[key])
            except ValueError:
                continue
            if key in options and value not in options[key]:
                continue
            st.session_state[key] = value
    for key in URL_LISTS:
        if key in params:
            values = params.get_all(key)
            st.session_state[key] = [v for v in values if key not in options or v in options[key]]
    return params.get(RUN_PARAM) == "1"


def keep_widget_values() -> None:
    """Before any widget is drawn: hold on to every setting's value across a script run that does not draw its
    widget (while the data path is blank the sidebar stops early; a page may leave a widget out).

    Streamlit forgets a widget's value after a run that did not draw it, and the browser then shows the widget's
    own default (a Ridge alpha of 0, no heads) while the settings still hold the old value: the numbers would
    change with the next click. Writing each value back (Streamlit's documented way to keep widget state) makes
    it the value the widget is drawn with.
    """
    for key in (*URL_FIELDS, *URL_LISTS):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
        elif _KEPT + key in st.session_state:  # evicted by a run_every fragment's run (streamlit#10805)
            st.session_state[key] = st.session_state[_KEPT + key]


def mirror_to_url(*, run_requested: bool) -> None:
    """Write the widgets' current values into the URL (only when they changed, so history stays short), and keep a
    copy of each outside the widgets' state, where a fragment's run cannot evict it (``keep_widget_values``)."""
    for key in (*URL_FIELDS, *URL_LISTS):
        if key in st.session_state:
            st.session_state[_KEPT + key] = st.session_state[key]
    wanted: dict[str, str | list[str]] = {}
    for key, (write, _) in URL_FIELDS.items():
        if key in st.session_state and st.session_state[key] is not None:
            wanted[key] = write(st.session_state[key])
    for key in URL_LISTS:
        if key in st.session_state:
            wanted[key] = [str(v) for v in st.session_state[key]] or [""]  # [""]: chosen none (not: untouched)
    if run_requested:
        wanted[RUN_PARAM] = "1"
    current = {key: (st.query_params.get_all(key) if key in URL_LISTS else st.query_params.get(key))
               for key in st.query_params}
    if current != wanted:
        st.query_params.from_dict(wanted)
