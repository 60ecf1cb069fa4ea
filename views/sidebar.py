"""The sidebar every page shares: data, encoders, heads, CV settings, the Run button and the job status area.

Its widget values are restored from the URL on a new session (a reload) and mirrored back into it
(views/state.py). Pressing **Run comparison** records the request and starts (or joins) an extraction
job for every chosen encoder whose embeddings are not all cached yet, then, once they are, the comparison
job (views/comparison.py); the Results page shows their progress meanwhile.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import streamlit as st

from otolith_core.cache import default_cache_dir
from otolith_core.data import (BOX_FORMATS, ManifestColumns, data_signature, detect_columns, download_signature,
                               manifest_header)
from otolith_core.heads import AUTO_SCALING, CLASS_WEIGHTS, HEADS, SCALINGS, WEIGHTED_HEADS, HeadSpec
from otolith_core.encoders import presets, registry
from otolith_core.encoders.variants import split_variant
from otolith_core.ties import TIE_LEVEL
from views import cached, comparison, jobs, state
from views.state import Settings
from views.state import initial as _initial

DEMO, PATH = "demo", "path"
DATA_CHOICES = {DEMO: "Built-in synthetic demo", PATH: "Folder or CSV manifest"}
DEMO_ENCODERS = ("otolith-morphometrics", "pixels-32")
# Preprocessing variants offered per run (any `NAME@...` also works in "Other model"); CLAHE with the
# documented defaults (the CLI's --clahe-clip-limit / --clahe-kernel change them).
VARIANTS = {"pad": "pad: whole photo on a square of its border colour", "pad+clahe": "pad + CLAHE contrast",
            "crop": "crop: centre square", "squash": "squash: stretched to square", "clahe": "CLAHE contrast only"}
GROUPING = {"auto": ("each fish, when photos share a fish id", None),
            "fish": ("each fish, always", True), "images": ("nothing: images are independent", False)}
COLUMN = "column:"  # + a manifest column: the grouping keeps each of its values in one fold
NO_HOLDOUT = ""  # the hold-out picker's "none": stratified k-fold


def demo_manifest() -> Path:
    """The synthetic demo under the cache folder, written on first use."""
    from otolith_core.demo import is_current, write_demo_dataset

    folder = default_cache_dir() / "demo_data"
    manifest = folder / "manifest.csv"
    if not manifest.is_file() or not is_current(manifest):  # an older demo lacks the covariate columns
        with st.spinner("Writing the synthetic demo data set (first start only, about 10 s)…"):
            write_demo_dataset(folder)
    return manifest


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
    specs = registry()
    known = presets()
    run_from_url = state.restore_from_url({"data_choice": list(DATA_CHOICES), "preset": ["none", *known],
                                           "encoders": list(specs), "variants": list(VARIANTS),
                                           "heads": list(HEADS), "scaling": [AUTO_SCALING, *SCALINGS],
                                           "class_weight": list(CLASS_WEIGHTS)})
    # "grouping" and "holdout" name manifest columns: checked against the data once it is read (_fold_settings)
    state.keep_widget_values()
    jobs.status_area(str(default_cache_dir()))  # on top, where it is seen while jobs run
    settings = _draw(specs, known)
    state.set_settings(settings)
    if settings is not None and run_from_url:
        state.request_run(settings)  # a reloaded tab goes on with the run it had asked for
    requested = state.requested_run()
    if settings is not None and requested != settings and settings.same_run_as(requested):
        requested = settings  # only downloads happened since (the run's own jobs fetch its photos): the same run
        state.request_run(settings)
    if settings is not None:
        st.sidebar.button("Run comparison", type="primary", key="run", on_click=state.press_run,
                          disabled=not (settings.encoders and settings.heads))
    pressed = state.take_run_press()  # recorded by the button's callback, so a run cut short cannot drop it
    pressed = pressed and settings is not None and bool(settings.encoders and settings.heads)
    if pressed:
        requested = settings
        state.request_run(settings)
        if _start_missing(settings):
            st.rerun()  # draw the status area (above) again, now with the jobs that were started
    if requested is not None and comparison.keep_going(requested, pressed):
        st.rerun()  # the comparison job started: the status area (above) follows it
    if requested is not None:
        st.sidebar.caption("Settings changed since the last run: press Run again." if requested != settings else
                           "The Results and Errors pages show this run.")
        st.sidebar.page_link("views/results.py", label="Open the results", icon=":material/bar_chart:")
    state.mirror_to_url(run_requested=requested is not None and requested == settings)
    return settings


def _draw(specs, known) -> Settings | None:
    sb = st.sidebar
    sb.header("Data")
    preset_path = os.environ.get("OTOLITH_DATA", "")
    choice = sb.radio("Images", list(DATA_CHOICES), key=_initial("data_choice", PATH if preset_path else DEMO),
                      format_func=DATA_CHOICES.get)
    if choice == DEMO:
        data_path, is_demo = str(demo_manifest()), True
        sb.caption("Synthetic demo: drawn otolith-like images, not real data.")
    else:
        typed = sb.text_input("Folder or manifest path", key=_initial("data_path", preset_path))
        problem = check_data_path(typed)
        if problem:
            sb.warning(problem)
            return None
        data_path, is_demo = str(Path(typed).expanduser()), False

    columns = _column_mapping(data_path)
    if columns is None:
        return None

    preset = sb.selectbox("Species preset", ["none", *known], key=_initial("preset", "none"),
                          help="; ".join(f"{k}: {v.get('description', '')}" for k, v in known.items()))
    preset_range = known.get(preset, {}).get("age_range")
    clip = sb.checkbox("Clip ages to a range", key=_initial("clip_ages", preset != "none" and bool(preset_range)))
    age_range = None
    if clip:
        default = preset_range or [1, 10]
        lo, hi = sb.columns(2)
        age_range = (int(lo.number_input("min age", 0, 100, key=_initial("age_min", int(default[0])))),
                     int(hi.number_input("max age", 0, 100, key=_initial("age_max", int(default[1])))))
        if age_range[0] > age_range[1]:
            sb.warning("The minimum age must not exceed the maximum.")
            return None
    signature = data_signature(data_path, columns)
    downloads = download_signature(data_path, columns, default_cache_dir())

    sb.header("Encoders")
    # Labels must not change while the app runs: Streamlit matches a multiselect's values by their labels.
    chosen = sb.multiselect("Encoders", list(specs), key=_initial("encoders", list(DEMO_ENCODERS) if is_demo else []),
                            format_func=lambda name: _encoder_label(specs[name]))
    cached_text = _cached_text(data_path, age_range, signature, downloads, chosen, columns)
    if cached_text:
        sb.caption(cached_text)
    with sb.expander("About these encoders"):
        st.markdown(_encoder_facts(specs))
    extra = sb.text_input("Other model", key=_initial("extra_model", ""), placeholder="ViT-B-32:laion2b_s34b_b79k",
                          help="OpenCLIP ARCH:TAG, timm:MODEL.TAG, hf-hub:org/name or local-dir:/path/to/folder "
                               "(OpenCLIP or timm), optionally with a pinned hub revision such as @revision=main "
                               "and then a variant such as @pad+clahe")
    variants = sb.multiselect("Preprocessing variants (each adds a row per encoder)", list(VARIANTS),
                              key=_initial("variants", []), format_func=VARIANTS.get,
                              help="How the photo is fitted into the square input, and contrast enhancement; "
                                   "each variant is embedded and cached as an encoder of its own, on the same folds.")
    bases = tuple(chosen) + ((extra.strip(),) if extra.strip() else ())
    encoders = bases + tuple(f"{base}@{variant}" for base in bases for variant in variants
                             if split_variant(base)[1] is None)  # a pinned revision takes a variant; a variant none
    # options follow the chosen encoders: drop a remembered part that is no longer offered before drawing
    st.session_state["combine"] = [n for n in st.session_state.get("combine", []) if n in encoders]
    together = sb.multiselect("Also evaluate together (concatenated)", list(encoders), key="combine",
                              help="Two or more of the chosen encoders as one more row, 'A + B': each part scaled "
                                   "as its own entry says, then concatenated, on the same folds.")
    combined = (tuple(together),) if len(together) >= 2 else ()
    probe = Settings(data_path, signature, is_demo, (), (), 2, 0, age_range, str(default_cache_dir()), columns=columns,
                     downloads=downloads)
    offered = cached.covariate_columns(probe)
    st.session_state["covariates"] = [c for c in st.session_state.get("covariates", []) if c in offered]
    covariates = tuple(sb.multiselect(
        "Fish covariates (manifest columns)", offered, key="covariates", disabled=not offered,
        placeholder="Choose columns" if offered else "The data has no extra columns",
        help="Added to every encoder as features: numbers standardised in each training fold, a column named "
             "month as sin/cos, text one-hot. Adds the rows 'covariates' (them alone) and 'A + covariates'."))
    impute = sb.checkbox("Fill blank covariates with the training median", key=_initial("impute_covariates", False),
                         disabled=not covariates,
                         help="Off: images with a blank covariate are left out of every row and listed on the Data "
                              "page. On: a blank takes the training fold's median (most common category).")
    flagged = cached.flagged_unusable(probe)
    leave_out = sb.checkbox(f"Leave out images flagged unusable ({len(flagged)})", key=_initial("exclude_unusable", False),
                            disabled=not flagged and not st.session_state.get("exclude_unusable"),
                            help="Images a reader flagged unusable on Review (broken, unreadable, the wrong "
                                 "structure). Off: they stay in the run, and the Data page lists them. On: left out "
                                 "of every row, listed on the Data page and in skipped.csv.")
    excluded = flagged if leave_out else ()

    sb.header("Heads")
    head_names = sb.multiselect("Heads", list(HEADS), key=_initial("heads", ["ridge", "svc"]),
                                help="ridge: Ridge(α) with rounded ages; svc: linear SVC(C), one-vs-one; "
                                     "ridge-cv: α chosen inside each training fold; logistic: multinomial logistic "
                                     "regression, C chosen by a 5-fold CV inside each training fold; knn: cosine "
                                     "k-nearest neighbours, k chosen the same way")
    alpha = sb.number_input("Ridge α", min_value=0.001, key=_initial("alpha", 6.0))
    c_value = sb.number_input("SVC C", min_value=0.0001, format="%.4f", key=_initial("svc_c", 0.1))
    scaling = sb.selectbox("Feature scaling (fitted per training fold)", [AUTO_SCALING, *SCALINGS],
                           key=_initial("scaling", AUTO_SCALING),
                           format_func=lambda v: "each encoder's own" if v == AUTO_SCALING else f"{v}, for every encoder",
                           help="Each encoder's registry entry states the scaling that suits it (l2 for learned "
                                "encoders, none for the built-ins); the caption under the Results table says which ran.")
    class_weight = sb.selectbox("Class weights", list(CLASS_WEIGHTS), key=_initial("class_weight", "none"),
                                help="balanced: each image weighs n / (n_ages x images of its age) in the training "
                                     "fold, so rare (old) ages count as much as common ones; ridge and ridge-cv "
                                     "through sample weights, svc and logistic through class_weight, the inner "
                                     "searches scored the same way. knn has no class weights: it stays unweighted.")
    if class_weight != "none" and any(h not in WEIGHTED_HEADS for h in head_names):
        sb.caption(":orange[knn has no class weights: it is fitted unweighted (the Results page says so too).]")
    heads = tuple(HeadSpec(h, alpha=float(alpha), C=float(c_value), scaling=scaling, class_weight=class_weight)
                  for h in head_names)

    sb.header("Cross-validation")
    group_columns, holdout_columns = cached.fold_columns(probe)
    grouping_options = [*GROUPING, *(COLUMN + c for c in group_columns)]
    holdout_options = [NO_HOLDOUT, *holdout_columns]
    if st.session_state.get("grouping") == COLUMN + columns.fish:
        st.session_state["grouping"] = "fish"
    for key, offered, default in (("grouping", grouping_options, "auto"), ("holdout", holdout_options, NO_HOLDOUT)):
        if st.session_state.get(key, default) not in offered:  # a column of another file (or a stale link)
            st.session_state[key] = default
    holding_out = bool(st.session_state.get("holdout"))
    n_folds = int(sb.number_input("Folds", min_value=2, max_value=50, key=_initial("folds", 10), disabled=holding_out,
                                  help="With a hold-out column the folds are its values, one each."))
    seed = int(sb.number_input("Seed", min_value=0, key=_initial("seed", 0)))
    repeats = int(sb.number_input("Repeats (R x k-fold, seeds seed..seed+R-1)", min_value=1, max_value=20,
                                  key=_initial("repeats", 1), disabled=holding_out,
                                  help="A hold-out column is one fixed split: it is not repeated."))
    grouping = sb.selectbox("Keep together in one fold", grouping_options, key=_initial("grouping", "auto"),
                            format_func=lambda g: _grouping_label(g, columns.fish),
                            help="Images that share a value never sit in both a training and a test fold (photos of "
                                 "one fish would inflate every number). A coarser column (station, tray photo) "
                                 "never splits a fish: values one fish's photos share are merged; a blank value is a "
                                 "group of its own. The bootstrap resamples these groups and the heads' inner CV "
                                 "splits by them too.")
    holdout = sb.selectbox("Hold out each value of", holdout_options, key=_initial("holdout", NO_HOLDOUT),
                           format_func=lambda c: c or "(none: stratified k-fold)", disabled=len(holdout_options) < 2,
                           help="Leave-one-group-out: each value (a cruise, a year) is the test fold once, trained on "
                                "all the others: does a model transfer to a cruise it never saw? Results shows the "
                                "score per held-out value beside the pooled one."
                                if len(holdout_options) > 1 else
                                "Needs a CSV manifest with a column of 2 to 50 values (a folder of age sub-folders "
                                "has no columns).")
    curve = sb.checkbox("Learning curve (10 %, 20 %, … of each training fold)", key=_initial("learning_curve", False))
    tie_level = float(sb.number_input(
        "Tie level (corrected t against the best, Holm)", min_value=0.001, max_value=0.5, step=0.01, format="%.3f",
        key=_initial("tie_level", TIE_LEVEL),
        help="Results marks, per metric, the models that cannot be told apart from the best at this level: the "
             "corrected paired t-test of the best against each other model, Holm-corrected over those comparisons. "
             "Changing it recomputes nothing."))
    group_by_fish, group_column = ((None, grouping[len(COLUMN):]) if grouping.startswith(COLUMN)
                                   else (GROUPING[grouping][1], None))
    return Settings(data_path, signature, is_demo, encoders, heads, n_folds, seed, age_range,
                    str(default_cache_dir()), 1 if holdout else repeats, group_by_fish, curve, combined, covariates,
                    bool(impute and covariates), columns, group_column, holdout or None, downloads, tie_level,
                    excluded)


def _grouping_label(value: str, fish_column: str) -> str:
    """How a grouping choice reads in its picker: the fish ones name the fish column."""
    if value.startswith(COLUMN):
        return f"each {value[len(COLUMN):]}"
    text = GROUPING[value][0]
    return text.replace("fish id", fish_column) if value == "auto" else f"{text} ({fish_column})" if value == "fish" \
        else text


NO_COLUMN = ""  # a picker's "none" choice (no box column, no id column)


def _column_mapping(data_path: str) -> ManifestColumns | None:
    """Column pickers for a CSV manifest (a lab's export read as it is), prefilled by ``detect_columns``; the
    native mapping for a folder of age sub-folders. None (after saying why) when the mapping cannot be used."""
    header = manifest_header(data_path)
    if header is None:
        return ManifestColumns()
    names = list(header.columns)
    guess = detect_columns(header)
    defaults = {"col_path": guess.path, "col_age": guess.age, "col_fish": guess.fish, "col_box": guess.box or NO_COLUMN,
                "col_box_format": guess.box_format, "col_id": guess.id or NO_COLUMN}
    optional = [NO_COLUMN, *names]
    # The pickers hold this file's mapping: another file's (a manifest read before in this session) gives way to
    # this file's guess as a whole; a mapping from the page's address (a reload: no file recorded yet) is kept
    # where this file has its columns.
    other_file = st.session_state.get("col_file", data_path) != data_path
    st.session_state["col_file"] = data_path
    for key, value in defaults.items():
        offered = BOX_FORMATS if key == "col_box_format" else optional if key in ("col_box", "col_id", "col_fish") else names
        if other_file or st.session_state.get(key) not in offered:
            st.session_state[key] = value if value in offered else (offered[0] if offered else NO_COLUMN)
    with st.sidebar.expander("Manifest columns", expanded=not guess.native):
        st.caption("Which of the manifest's columns hold what (a lab's export is read as it is).")
        pick = partial(st.selectbox, format_func=lambda c: c or "(none)")
        path = pick("Image paths or URLs", names, key="col_path")
        age = pick("Reader ages", names, key="col_age")
        fish = pick("Fish (photos of one fish)", optional, key="col_fish",
                    help="Photos that share a value are one fish: kept in one fold.")
        box = pick("Crop box (one column)", optional, key="col_box",
                   help="[[x0, y0], [x1, y1]], [x0, y0, x1, y1] or x0,y0,x1,y1 in pixels of the upright photo; "
                        "(none): the x0, y0, x1, y1 columns when present. Each box is an image of its own.")
        box_format = st.radio("Box numbers", BOX_FORMATS, key="col_box_format", horizontal=True, disabled=not box,
                              format_func={"xyxy": "corners", "xywh": "corner + width, height"}.get)
        given = pick("Image id (optional)", optional, key="col_id",
                     help="A column naming each image, e.g. measurement_id; (none): its path plus its box.")
    try:
        return ManifestColumns(path=path, age=age, fish=fish or "fish_id", box=box or None, box_format=box_format,
                               id=given or None)
    except ValueError as exc:
        st.sidebar.warning(str(exc))
        return None


def _encoder_facts(specs) -> str:
    """One line per registered encoder: year, dim, input size, download and licence (text, not a table widget)."""
    lines = []
    for s in specs.values():
        size = f"{s.preprocessing.size} px · " if s.preprocessing else ""
        lines.append(f"- **{s.name}**: {s.year} · {s.embed_dim}-d · {size}{s.download_size} · {s.licence}")
    return "\n".join(lines)


def _encoder_label(spec) -> str:
    return f"{spec.name} · {'built in' if spec.loader == 'builtin' else spec.download_size}"


def _cached_text(data_path: str, age_range, signature: str, downloads: str, names, columns: ManifestColumns) -> str:
    """``"Cached: a 400/400, b 0/400"`` for the chosen encoders (empty when the data cannot be read)."""
    if not names:
        return ""
    probe = Settings(data_path, signature, False, tuple(names), (), 2, 0, age_range, str(default_cache_dir()),
                     columns=columns, downloads=downloads)
    try:
        data = cached.dataset(probe)
    except (ValueError, FileNotFoundError):
        return ""
    counts = [f"{name} {len(e.rows)}/{len(data)}" for name, (e, _) in cached.cached_embeddings(probe, data, names).items()]
    return "Cached: " + ", ".join(counts) if counts else ""


def _start_missing(settings: Settings) -> bool:
    """Start (or join) the extraction of every chosen encoder whose embeddings are incomplete; whether any was.

    Encoders whose weights would have to be downloaded wait for the user's consent on the Results page.
    """
    try:
        data = cached.dataset(settings)
    except (ValueError, FileNotFoundError):
        return False  # the pages say what is wrong with the data
    started = False
    for name, (embedding, _) in cached.cached_embeddings(settings, data, settings.encoders).items():
        if embedding.pending and jobs.may_start(name):
            jobs.start(settings, name)
            started = True
    return started
