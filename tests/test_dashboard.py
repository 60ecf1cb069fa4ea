"""The dashboard driven through streamlit's AppTest: every page, the numbers it shows, its downloads."""

import functools
import io
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import copy_cache_lacking, write_tray_export
from otolith_core import comparison as core_comparison
from otolith_core.cli import main as cli
from otolith_core.jobs import list_jobs

ENCODERS = ["otolith-morphometrics", "pixels-32"]
APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_no_pages_folder_beside_app_py():
    """A `pages/` folder would switch Streamlit into its legacy multipage mode; the pages live in views/."""
    assert not (Path(APP).parent / "pages").exists()


def test_the_server_spends_nothing_after_a_script_run_but_the_run(tmp_path):
    """`streamlit run app.py` reads the project's .streamlit/config.toml: bound to this computer, and after each
    script run (the status area's refresh every 2 s among them) neither a full garbage collection (0.4 s of CPU
    once torch is loaded: half the browser test's server time) nor a walk over every imported module's path for
    the source watcher, a developer's convenience."""
    import subprocess
    import sys

    ask = ("from streamlit import config; print([config.get_option(o) for o in "
           "('server.address', 'runner.postScriptGC', 'server.fileWatcherType')])")
    env = dict(os.environ, HOME=str(tmp_path))  # no ~/.streamlit/config.toml of whoever runs the tests
    shown = subprocess.run([sys.executable, "-c", ask], cwd=Path(APP).parent, env=env, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "['127.0.0.1', False, 'none']"


@pytest.fixture
def media_stores(monkeypatch):
    """The in-memory media stores AppTest creates for each run (download buttons keep their bytes there)."""
    import streamlit.testing.v1.app_test as app_test_module
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    stores = []

    class Recording(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", Recording)
    return stores


@functools.cache
def _components():
    """Streamlit's registry of installed custom components, scanned once per test run as the server scans it once
    at its start (each AppTest would scan every installed package's metadata again: a quarter of a second)."""
    from streamlit.components.v2.component_manager import BidiComponentManager

    manager = BidiComponentManager()
    manager.discover_and_register_components(start_file_watching=False)
    return manager


@functools.cache
def _scripts():
    """One cache of the pages' compiled code for the whole test run, as the server keeps one while it runs (AppTest
    makes a new one for every run: app.py and the page compiled again each time, a tenth of a page run's time)."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    return ScriptCache()


def _session() -> AppTest:
    """A new session of the dashboard: a new browser tab, or the tab after a reload or a restart."""
    import streamlit.testing.v1.app_test as app_test_module

    app_test_module.ScriptCache = _scripts  # read by AppTest's run (streamlit 1.67): the one cache, as in the server
    at = AppTest.from_file(APP, default_timeout=300)
    at._bidi_component_manager = _components()  # read by AppTest's run: the one registry, as in the server
    return at


def _started(demo_manifest, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # no weights, whatever this machine holds
    monkeypatch.setenv("OTOLITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OTOLITH_DATA", str(demo_manifest))
    at = _session()
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def app(demo_manifest, demo_cache, tmp_path, monkeypatch, media_stores):
    """The dashboard on the demo manifest, the built-in extractors' embeddings already cached (as after a first run)."""
    shutil.copytree(demo_cache, tmp_path / "cache")
    return _started(demo_manifest, tmp_path, monkeypatch)


def _run(at, encoders=ENCODERS):
    """Choose encoders and heads, press Run, and wait for the jobs it started (extractions, then the comparison)."""
    at.sidebar.multiselect(key="encoders").set_value(encoders)
    at.sidebar.multiselect(key="heads").set_value(["ridge", "svc"])
    at.run()
    at.sidebar.button(key="run").click()
    at.run()
    assert not at.exception
    return _settle(at)


def wait_for_jobs(cache_dir, timeout=300):
    deadline = time.time() + timeout
    while any(job.active for job in list_jobs(cache_dir)):
        assert time.time() < deadline, list_jobs(cache_dir)
        time.sleep(0.2)


def _settle(at):
    """Wait for the running jobs and rerun the page (as the status area does when a job ends), until a rerun starts
    no new job: the extractions a Run press started, then the comparison job started when they have ended."""
    cache = os.environ["OTOLITH_CACHE_DIR"]
    while True:
        wait_for_jobs(cache)
        at.run()
        assert not at.exception
        if not any(job.active for job in list_jobs(cache)):
            return at


def _comparison_jobs() -> dict[str, float]:
    """The comparison jobs recorded in the test's cache: id -> when it was (last) started."""
    return {j.id: j.started for j in list_jobs(os.environ["OTOLITH_CACHE_DIR"]) if j.kind == "comparison"}


def _download(at, stores, label):
    button = next(b for b in at.get("download_button") if b.proto.label == label)
    file_id = button.proto.url.rsplit("/", 1)[-1].split(".")[0]
    return stores[-1].get_file(file_id).content


@pytest.mark.slow
def test_data_page_shows_counts_chart_thumbnails_and_warnings(app, demo_manifest):
    assert app.title[0].value == "Data"
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Images"] == str(len(pd.read_csv(demo_manifest)))
    assert any("several photos" in w.value for w in app.warning)  # the demo photographs some fish twice
    assert len(app.get("vega_lite_chart")) == 1 and len(app.get("image")) >= 10


def test_a_chart_is_drawn_from_arrow_made_once_as_streamlit_makes_it_from_the_rows():
    """A page's chart (views.widgets.chart) keeps its datasets as Arrow bytes made once per key: the element the page
    sends is the one ``st.vega_lite_chart`` makes of the chart's rows, which it would convert again at every rerun."""

    def page():
        import pandas as pd
        import streamlit as st

        from otolith_core.charts import age_histogram
        from views import cached
        from views.widgets import chart

        ages = pd.Series([1, 2, 2, 3, 3, 3, 3], name="age")
        chart(st, ("a test's histogram",), lambda: age_histogram(ages, n_folds=3))
        st.vega_lite_chart(spec=age_histogram(ages, n_folds=3).to_dict(validate=False), width="stretch")
        kept = cached.derived(("a test's histogram",), None)  # what later reruns are handed, made on the first
        arrow = [isinstance(rows, bytes) for rows in kept["datasets"].values()]
        st.markdown(str(len(arrow) == 2 and all(arrow)))

    at = AppTest.from_function(page)
    at.run()
    assert not at.exception
    ours, streamlits = (chart.proto for chart in at.get("vega_lite_chart"))
    assert ours.spec == streamlits.spec and len(ours.datasets) == 2
    assert [(d.name, d.data.data) for d in ours.datasets] == [(d.name, d.data.data) for d in streamlits.datasets]
    assert at.markdown[-1].value == "True"


def test_a_thumbnail_is_the_jpeg_st_image_would_make_of_its_pixels(demo_manifest):
    """The Data, Errors and Review pages hand ``st.image`` a thumbnail's JPEG, encoded once per file version (at
    every rerun it cost the Data page a quarter of its time): byte for byte what ``st.image`` itself makes of the
    thumbnail's RGB pixels, so the pages show what they showed."""
    import numpy as np
    from streamlit.elements.lib.image_utils import _np_array_to_bytes

    from otolith_core.data import load_dataset
    from views import cached

    for record in load_dataset(demo_manifest).records[:3]:
        pixels = cached._decode(str(record.path), None, 200)
        pixels.thumbnail((200, 200))
        shown = cached.thumbnail(str(record.path), None, record.path.stat().st_mtime_ns)
        assert shown == _np_array_to_bytes(np.asarray(pixels), "auto")


@pytest.mark.slow
def test_results_page_numbers_equal_the_core_and_downloads_equal_the_cli(app, demo_manifest, tmp_path, media_stores):
    _run(app)
    app.switch_page("views/results.py").run()
    assert not app.exception and app.title[0].value == "Results"
    shown = app.dataframe[0].value
    out = tmp_path / "cli"
    assert cli(["run", "--data", str(demo_manifest), "--models", ",".join(ENCODERS), "--heads", "ridge,svc",
                "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-chart"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    for row, expected in zip(shown.itertuples(), summary.itertuples()):
        assert (row.encoder, row.head) == (expected.encoder, expected.head)
        tied = expected.accuracy_tied_with_best is True  # read back: True, False or NaN (no-skill)
        assert row.Accuracy.removesuffix(" ★") == f"{expected.accuracy_mean:.2%} ± {expected.accuracy_sd:.2%}" \
            + (" ●" if tied and not row.Accuracy.endswith(" ★") else "")
        assert row[6].removesuffix(" ★").removesuffix(" ●") == f"{expected.rmse_mean:.3f} ± {expected.rmse_sd:.3f}"
        assert row[6].endswith((" ★", " ●")) == (expected.rmse_tied_with_best is True)
    assert sum(row.Accuracy.endswith(" ★") for row in shown.itertuples()) == 1
    for name in ("summary.csv", "folds.csv", "predictions.csv", "ttests.csv", "agebias.csv", "per_age.csv",
                 "symmetry.csv", "skipped.csv", "per_fish.csv", "fish_predictions.csv"):
        assert _download(app, media_stores, name) == (out / name).read_bytes(), name
    run = json.loads(_download(app, media_stores, "run.json"))
    assert run["cv"] == json.loads((out / "run.json").read_text())["cv"]
    assert run["data"]["image_set_sha256"] == json.loads((out / "run.json").read_text())["data"]["image_set_sha256"]
    assert len(app.get("vega_lite_chart")) == 6  # three metric bars, per-fold lines, age bias, per-age heat table
    side_by_side = next(d.value for d in app.dataframe if "naive p" in d.value.columns)
    assert len(side_by_side) == 6 * 3 and {"naive p", "corrected p"} <= set(side_by_side.columns)
    assert any("over-confident" in m.value for m in app.markdown)
    assert any(c.value.startswith("Embeddings computed in: otolith-morphometrics fp32, pixels-32 fp32") for c in app.caption)


@pytest.mark.slow
def test_repeats_and_learning_curve_from_the_sidebar(app):
    app.sidebar.number_input(key="repeats").set_value(2)
    app.sidebar.number_input(key="folds").set_value(5)  # 2 x 5 folds and the curve's fractions: enough to show them
    app.sidebar.checkbox(key="learning_curve").check()
    _run(app)
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert any("2 × 5-fold" in s.value for s in app.subheader)
    assert any(s.value == "Learning curve" for s in app.subheader)
    assert len(app.get("vega_lite_chart")) == 7


@pytest.mark.slow
def test_errors_page_draws_matrices_gallery_and_disagreements_without_recomputing(app, monkeypatch):
    _run(app)
    app.switch_page("views/errors.py").run()
    assert not app.exception
    assert len(app.get("vega_lite_chart")) == 4  # one confusion matrix per encoder x head
    assert [s.value for s in app.subheader] == ["Confusion matrices", "Misclassified images", "Where two models disagree"]
    assert len(app.get("image")) > 0

    jobs_before = _comparison_jobs()
    app.number_input(key="gallery_error").set_value(2).run()
    app.toggle(key="cm_normalise").set_value(True).run()
    assert not app.exception and _comparison_jobs() == jobs_before  # display filters never rerun the cross-validation
    assert any("wrong by ≥ 2" in c.value for c in app.caption)


@pytest.mark.slow
def test_embeddings_page_reports_cached_counts_and_the_choice_survives_extraction(demo_manifest, demo_cache, tmp_path,
                                                                                 monkeypatch, media_stores):
    n = len(pd.read_csv(demo_manifest))
    # an extraction stopped part-way: the last 20 images lack their morphometrics, pixels-32 has none yet
    copy_cache_lacking(demo_cache, demo_manifest, tmp_path / "cache", {ENCODERS[0]: 20, ENCODERS[1]: None})
    app = _started(demo_manifest, tmp_path, monkeypatch)
    labels_before = app.sidebar.multiselect(key="encoders").options
    app.sidebar.multiselect(key="encoders").set_value(ENCODERS).run()
    assert f"Cached: otolith-morphometrics {n - 20}/{n}, pixels-32 0/{n}" in [c.value for c in app.sidebar.caption]
    _run(app)  # the jobs extract what is missing
    app.switch_page("views/embeddings.py").run()
    assert not app.exception
    assert {m.value for m in app.markdown if "cached" in m.value} == {f"**{e}** — {n} of {n} images cached" for e in ENCODERS}
    assert f"Cached: otolith-morphometrics {n}/{n}, pixels-32 {n}/{n}" in [c.value for c in app.sidebar.caption]
    # Streamlit matches a multiselect's values by label: labels that changed with the counts dropped the choice
    assert app.sidebar.multiselect(key="encoders").options == labels_before
    assert app.sidebar.multiselect(key="encoders").value == ENCODERS
    assert "pixels-32 · built in" in labels_before and "clip-vit-l-14-336 · about 1.7 GB" in labels_before


@pytest.mark.slow
def test_encoder_without_weights_is_named_and_the_others_still_run(app, offline_hub):
    _run(app, ["clip-vit-l-14-336", "pixels-32"])
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert any("clip-vit-l-14-336" in w.value and "download" in w.value for w in app.warning)
    assert any(b.label.startswith("Download clip-vit-l-14-336 (about 1.7 GB)") for b in app.button)
    assert set(app.dataframe[0].value.encoder) == {"pixels-32", "no-skill"}


@pytest.mark.slow
def test_a_mistyped_path_is_explained(app):
    app.sidebar.text_input(key="data_path").set_value("/no/such/folder").run()
    assert not app.exception
    assert any("does not exist" in w.value for w in app.sidebar.warning)


@pytest.mark.slow
def test_first_start_writes_the_labelled_synthetic_demo(tmp_path, monkeypatch, demo_drawn_blank):
    from functools import partial

    from otolith_core import demo

    # the demo itself, its size and its drawing, is test_demo's; here what counts is that the first start writes it:
    # 120 images, not 400, each drawn blank
    monkeypatch.setattr(demo, "write_demo_dataset", partial(demo.write_demo_dataset, n_images=120))
    monkeypatch.setenv("OTOLITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OTOLITH_DATA", raising=False)
    at = _session().run()
    assert not at.exception
    assert (tmp_path / "cache" / "demo_data" / "manifest.csv").is_file()
    assert any("Synthetic demo" in w.value for w in at.warning)
    assert at.sidebar.multiselect(key="encoders").value == ENCODERS


@pytest.mark.slow
def test_images_an_encoder_could_not_use_are_listed_on_the_data_page(tmp_path, monkeypatch, demo_manifest):
    from PIL import Image

    rows = pd.read_csv(demo_manifest)[["path", "age"]]
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    Image.new("RGB", (50, 50), (0, 0, 0)).save(tmp_path / "blank.png")
    copy = tmp_path / "copy of first.jpg"
    copy.write_bytes(Path(rows.path[0]).read_bytes())
    other_age = 1 if rows.age[0] != 1 else 2
    extra = pd.DataFrame({"path": [str(tmp_path / "broken.jpg"), str(tmp_path / "blank.png"), "nowhere.jpg", str(copy)],
                          "age": [3, 4, 5, other_age]})
    pd.concat([rows, extra]).to_csv(tmp_path / "mixed.csv", index=False)
    monkeypatch.setenv("OTOLITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OTOLITH_DATA", str(tmp_path / "mixed.csv"))
    at = _session().run()
    _run(at, ["pixels-32"])
    at.switch_page("views/results.py").run()  # extracts; the broken and blank images fail there
    assert not at.exception
    at.switch_page("views/data.py").run()
    skipped = at.dataframe[-1].value
    reasons = dict(zip(skipped.path, skipped.reason))
    assert "cannot decode" in reasons[str(tmp_path / "broken.jpg")]
    assert "blank" in reasons[str(tmp_path / "blank.png")]
    assert any("file not found" in r for r in reasons.values())
    assert any("same image but carry different ages" in e.value and str(copy) in e.value for e in at.error)


@pytest.mark.slow
def test_the_manifest_mixing_every_bad_row_runs_to_completion_in_the_dashboard(tmp_path, monkeypatch, demo_manifest,
                                                                               media_stores):
    """The CLI's corpus of bad and unusual files: every bad row named on the Data page and in skipped.csv,
    every valid image evaluated."""
    import io

    from conftest import write_mixed_manifest

    manifest, valid, bad, copy = write_mixed_manifest(demo_manifest, tmp_path)
    monkeypatch.setenv("OTOLITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OTOLITH_DATA", str(manifest))
    at = _session().run()
    assert not at.exception
    _run(at, ["pixels-32"])
    at.switch_page("views/results.py").run()
    assert not at.exception
    predictions = pd.read_csv(io.BytesIO(_download(at, media_stores, "predictions.csv")))
    assert set(valid) <= set(predictions.image)
    assert predictions.image.nunique() == len(pd.read_csv(demo_manifest)) + len(valid)
    downloaded = " | ".join(pd.read_csv(io.BytesIO(_download(at, media_stores, "skipped.csv"))).reason)
    at.switch_page("views/data.py").run()
    assert not at.exception
    shown = " | ".join(at.dataframe[-1].value.reason)
    for reason in bad:
        assert reason in shown, f"Data page: {reason}"
        assert reason in downloaded, f"skipped.csv: {reason}"
    assert any("same image but carry different ages" in e.value and copy in e.value for e in at.error)


def _chart_data(chart) -> pd.DataFrame:
    """The data a drawn Altair chart holds (Streamlit sends it beside the spec, as Arrow)."""
    import pyarrow as pa

    frames = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
def test_errors_page_with_repeats_shows_one_repeats_real_predictions(app, demo_manifest, tmp_path):
    app.sidebar.number_input(key="repeats").set_value(2)
    _run(app)
    app.switch_page("views/errors.py").run()
    assert not app.exception
    out = tmp_path / "cli"
    assert cli(["run", "--data", str(demo_manifest), "--models", ",".join(ENCODERS), "--heads", "ridge,svc",
                "--repeats", "2", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-chart"]) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    a, b = "otolith-morphometrics / ridge", "otolith-morphometrics / svc"
    n_images = len(pd.read_csv(demo_manifest))
    for repeat in (0, 1):
        app.selectbox(key="gallery_repeat").set_value(repeat).run()
        counted = [int(_chart_data(chart)["n"].sum()) for chart in app.get("vega_lite_chart")]
        assert counted == [n_images] * 4, counted  # each image once per matrix: the chosen repeat's predictions
        assert any(f"Each of the {n_images} images counted once: repeat {repeat}" in c.value for c in app.caption)
        app.selectbox(key="disagree_a").set_value(a)
        app.selectbox(key="disagree_b").set_value(b).run()
        assert not app.exception
        own = predictions[predictions.repeat == repeat]
        right = {m: own[own.encoder + " / " + own["head"] == m].set_index("image").eval("pred_age == true_age")
                 for m in (a, b)}
        expected = int((right[a] & ~right[b]).sum())
        shown = next(m.value for m in app.markdown if m.value.startswith("**A right, B wrong"))
        assert shown.endswith(f": {expected} images"), (repeat, shown)
        for table in app.dataframe:
            if {a, b} <= set(table.value.columns):
                assert all(float(v).is_integer() for v in table.value[a])


@pytest.mark.slow
def test_results_wait_for_the_extraction_jobs_and_the_status_area_follows_them(app, tiny_model_dir, monkeypatch):
    """Run starts jobs instead of extracting inline; Results says it is waiting and shows their progress;
    when they end, the comparison job starts (the page fits no head) and its progress shows; when it ends, the
    comparison appears."""
    from otolith_core import embeddings

    def no_inline_extraction(*args, **kwargs):
        assert kwargs.get("cached_only"), "the dashboard extracted inside a script run"
        return real_extract(*args, **kwargs)

    real_extract = embeddings.extract_embeddings
    monkeypatch.setattr(embeddings, "extract_embeddings", no_inline_extraction)
    monkeypatch.setattr(core_comparison, "compare", lambda *a, **k: pytest.fail("the dashboard cross-validated"))
    app.sidebar.text_input(key="extra_model").set_value(f"local-dir:{tiny_model_dir}")
    app.sidebar.multiselect(key="encoders").set_value(["pixels-32"])
    app.run()
    app.sidebar.button(key="run").click().run()
    app.switch_page("views/results.py").run()  # the tiny model's job is still importing torch
    assert not app.exception
    assert any("Waiting for extraction" in i.value for i in app.info)
    assert any(s.value == "Jobs" for s in app.sidebar.header)
    assert any(b.label == "Cancel" for b in app.sidebar.button)
    wait_for_jobs(os.environ["OTOLITH_CACHE_DIR"])
    app.run()  # as the status area reruns the page when the jobs end: the comparison job starts
    assert not app.exception
    assert any("Cross-validating in the background" in i.value for i in app.info)
    assert len(_comparison_jobs()) == 1
    _settle(app)
    assert set(app.dataframe[0].value.encoder) == {"pixels-32", f"local-dir:{tiny_model_dir}", "no-skill"}
    assert any("finished" in s.value for s in app.sidebar.success)  # the status area keeps the ended jobs
    heads = len(app.sidebar.multiselect(key="heads").value)
    assert any(s.value.startswith("**Comparison** of 2 encoders") and f"finished: {2 * heads} models" in s.value
               for s in app.sidebar.success)


@pytest.mark.slow
def test_cancel_in_the_status_area_stops_the_job_and_restart_goes_on(app, tiny_model_dir):
    app.sidebar.text_input(key="extra_model").set_value(f"local-dir:{tiny_model_dir}").run()
    app.sidebar.button(key="run").click().run()
    cancel = next(b for b in app.sidebar.button if b.label == "Cancel")
    cancel.click().run()
    wait_for_jobs(os.environ["OTOLITH_CACHE_DIR"])
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert any("cancelled" in w.value for w in app.warning)
    restart = next(b for b in app.sidebar.button if b.label == "Restart")
    restart.click().run()
    _settle(app)
    assert not app.exception and set(app.dataframe[0].value.encoder) == {f"local-dir:{tiny_model_dir}", "no-skill"}


@pytest.mark.slow
def test_a_comparison_job_is_cancelled_from_results_and_only_a_run_press_starts_it_again(app, monkeypatch):
    """Results shows the comparison job's card while it runs; its Cancel stops the job, the page says so and
    offers Restart; reruns without a press leave it cancelled; a Run press starts it again."""
    from otolith_core.jobs import read_job

    cache = os.environ["OTOLITH_CACHE_DIR"]
    app.sidebar.multiselect(key="encoders").set_value(["otolith-morphometrics"])
    app.sidebar.multiselect(key="heads").set_value(["logistic"])
    app.sidebar.number_input(key="folds").set_value(3)
    app.run()
    app.switch_page("views/results.py").run()
    # The Cancel below must land while the job runs. Forked from the warm launcher, the whole job (3 folds of the
    # logistic head on 149 images) could end before the page's next run; a fresh process spends its first
    # seconds of CPU importing scikit-learn, so the Cancel lands while it starts, whatever the machine's load.
    with monkeypatch.context() as fresh:
        fresh.setenv("OTOLITH_WARM_LAUNCHER", "0")
        app.sidebar.button(key="run").click().run()
    assert any("Cross-validating in the background" in i.value for i in app.info)
    (job_id,) = _comparison_jobs()
    app.button(key=f"cancel-comparing-{job_id}").click().run()  # while the job is still starting
    wait_for_jobs(cache)
    app.run()
    assert not app.exception
    assert any("Comparison" in w.value and "cancelled" in w.value for w in app.warning)
    assert app.button(key=f"restart-comparison-{job_id}")
    app.run()
    assert read_job(cache, job_id).state == "cancelled"  # never started again by itself
    app.sidebar.button(key="run").click().run()
    _settle(app)
    assert read_job(cache, job_id).state == "finished" and list(_comparison_jobs()) == [job_id]
    assert set(app.dataframe[0].value.encoder) == {"otolith-morphometrics", "no-skill"}


@pytest.mark.slow
def test_a_reload_restores_every_setting_and_a_restart_shows_stored_results_without_computing(
        app, demo_manifest, tiny_model_dir, monkeypatch):
    app.sidebar.multiselect(key="encoders").set_value(["pixels-32"])
    app.sidebar.text_input(key="extra_model").set_value(f"local-dir:{tiny_model_dir}")
    app.sidebar.number_input(key="seed").set_value(4)
    app.sidebar.number_input(key="folds").set_value(5)
    app.sidebar.multiselect(key="heads").set_value(["ridge"])
    app.run().sidebar.button(key="run").click().run()
    _settle(app)
    app.switch_page("views/results.py").run()
    shown = app.dataframe[0].value
    url = dict(app.query_params)
    assert url["seed"] == "4" and url["run"] == "1" and url["extra_model"] == f"local-dir:{tiny_model_dir}"

    jobs_before = _comparison_jobs()
    assert len(jobs_before) == 1
    reloaded = _session()  # a new session: a reloaded tab, or a restarted dashboard
    for key, value in url.items():
        reloaded.query_params[key] = value
    reloaded.run()
    assert not reloaded.exception
    sidebar = reloaded.sidebar
    assert sidebar.number_input(key="seed").value == 4 and sidebar.number_input(key="folds").value == 5
    assert sidebar.multiselect(key="encoders").value == ["pixels-32"]
    assert sidebar.multiselect(key="heads").value == ["ridge"]
    assert sidebar.text_input(key="extra_model").value == f"local-dir:{tiny_model_dir}"
    reloaded.switch_page("views/results.py").run()
    assert not reloaded.exception and _comparison_jobs() == jobs_before  # read back from disk, not computed again
    pd.testing.assert_frame_equal(reloaded.dataframe[0].value, shown)


@pytest.mark.slow
def test_a_preprocessing_variant_adds_rows_from_the_sidebar(app):
    """Choosing the pad+clahe variant adds `pixels-32@pad+clahe` beside `pixels-32`: extracted by a job of its
    own, then a row of its own in the results table, on the same folds."""
    app.sidebar.multiselect(key="variants").set_value(["pad+clahe"])
    _run(app, encoders=["pixels-32"])
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert set(app.dataframe[0].value.encoder) == {"pixels-32", "pixels-32@pad+clahe", "no-skill"}


@pytest.mark.slow
def test_two_encoders_evaluated_together_add_a_combined_row(app):
    app.sidebar.multiselect(key="encoders").set_value(ENCODERS)
    app.run()
    app.sidebar.multiselect(key="combine").set_value(list(ENCODERS))
    _run(app)
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert set(app.dataframe[0].value.encoder) == {*ENCODERS, " + ".join(ENCODERS), "no-skill"}
    app.sidebar.multiselect(key="encoders").set_value([ENCODERS[0]]).run()  # a part dropped: no combination left
    assert not app.exception and app.sidebar.multiselect(key="combine").value == [ENCODERS[0]]


@pytest.mark.slow
def test_covariates_chosen_in_the_sidebar_add_their_rows(app):
    covariates = app.sidebar.multiselect(key="covariates")
    assert {"length", "month"} <= set(covariates.options) and "source" not in covariates.options  # constant: no use
    assert "true_age" not in covariates.options  # a folder the demo wrote, loaded by path: its truth is no covariate
    covariates.set_value(["length", "month"])
    _run(app)
    app.switch_page("views/results.py").run()
    assert not app.exception
    summary = app.dataframe[0].value
    assert set(summary.encoder) == {*ENCODERS, "covariates", *(f"{e} + covariates" for e in ENCODERS), "no-skill"}
    assert any("length (numeric" in str(getattr(e, "body", "")) for e in app.info)


@pytest.mark.slow
def test_review_ranks_doubtful_ages_and_saves_a_blind_second_reading(app):
    from otolith_core.readings import load_readings

    app.sidebar.multiselect(key="encoders").set_value([ENCODERS[0]])
    app.sidebar.multiselect(key="heads").set_value(["ridge"])
    app.sidebar.number_input(key="folds").set_value(3)  # the logistic head's inner CV is the slow part
    app.run()
    app.switch_page("views/review.py").run()
    assert not app.exception
    app.sidebar.button(key="run").click().run()
    _settle(app)
    assert any("add the **logistic** head" in i.value for i in app.info)  # ridge gives no probabilities
    app.sidebar.multiselect(key="heads").set_value(["logistic"]).run()
    app.sidebar.button(key="run").click().run()
    _settle(app)
    ranking = app.dataframe[0].value
    assert ranking["score"].is_monotonic_decreasing and ranking["rank"].iloc[0] == 1
    first = ranking["image"].iloc[0]
    app.toggle(key="review_blind").set_value(True).run()
    assert all("reader" not in str(c.value) for c in app.caption if "score" in str(c.value))
    app.button(key=f"reread-{first}").click().run()
    assert not app.exception and not app.main.success  # nothing about the first age before a reading is entered
    app.text_input(key="reader_name").input("GS")
    app.number_input(key=f"second_age-{first}").set_value(4)
    next(b for b in app.button if b.label == "Save reading").click().run()
    assert not app.exception
    assert "The reader's age was" in app.main.success[0].value
    readings = load_readings(os.environ["OTOLITH_CACHE_DIR"])
    assert readings[["image", "second_age", "reader"]].values.tolist() == [[first, 4, "GS"]]
    assert any("1 image read twice" in m.value for m in app.markdown)
    app.button(key="review_next").click().run()  # on to the next most doubtful image, blind again
    assert not app.exception and not app.main.success
    shown = ranking[ranking["score"] >= 0.5]["image"].tolist()
    assert app.session_state["review_image"] == shown[1]
    assert app.number_input(key=f"second_age-{shown[1]}").value is None


@pytest.mark.slow
def test_review_maps_each_encoder_and_shows_a_picked_images_neighbours(app):
    _run(app)
    app.switch_page("views/review.py").run()
    assert not app.exception
    assert any("add the **logistic** head" in i.value for i in app.info)  # no ranking without probabilities
    assert len(app.get("vega_lite_chart")) == 2  # a map per encoder, side by side
    picked = pd.read_csv(os.environ["OTOLITH_DATA"]).path[0]
    _select_on_map(app, app.get("vega_lite_chart")[0], boxed={}, picked=[{"image": picked}])  # a click
    assert not app.exception and app.session_state["space_image"] == picked
    neighbour_captions = [m.value for m in app.markdown if m.value.startswith("Nearest in")]
    assert neighbour_captions == [f"Nearest in **{e}** (cosine similarity):" for e in ENCODERS]

    # a box on the first map: the images inside it below the maps, ringed on both maps
    first = _map_points(app.get("vega_lite_chart")[0])
    x0, x1 = first["x"].quantile([0.2, 0.8])
    y0, y1 = first["y"].quantile([0.2, 0.8])
    inside = first[first["x"].between(x0, x1) & first["y"].between(y0, y1)]
    assert 24 < len(inside) < len(first)  # more than the gallery shows
    _select_on_map(app, app.get("vega_lite_chart")[0], boxed={"x": [x0, x1], "y": [y1, y0]})  # y as dragged down
    assert not app.exception
    assert f"**{len(inside)} selected**, showing the first 24" in [m.value for m in app.markdown]
    second = _map_points(app.get("vega_lite_chart")[1])
    assert second.loc[second["selected"], "image"].tolist() == inside["image"].tolist()  # the other map marks them
    assert _map_points(app.get("vega_lite_chart")[0])["selected"].tolist() == first["image"].isin(inside["image"]).tolist()
    ages = second.set_index("image")["model_age"]
    assert _gallery(app) == sorted(f"{row.image} · reader {row.reader_age} · {ENCODERS[0]} / ridge {row.model_age} · "
                                   f"{ENCODERS[1]} / ridge {ages[row.image]}" for row in inside.head(24).itertuples())
    assert app.session_state["space_image"] == picked  # a box is not a pick

    # a box on the other map replaces the selection; a click leaves it; Clear empties it
    box = second.sort_values("x").head(3)
    _select_on_map(app, app.get("vega_lite_chart")[1], boxed={"x": [box["x"].min(), box["x"].max()],
                                                              "y": [second["y"].min(), second["y"].max()]})
    assert "**3 selected**" in [m.value for m in app.markdown]
    assert [c.split(" · ")[0] for c in _gallery(app)] == sorted(box["image"])
    assert _map_points(app.get("vega_lite_chart")[0])["selected"].sum() == 3
    _select_on_map(app, app.get("vega_lite_chart")[1], boxed={}, picked=[{"image": box["image"].iloc[0]}])
    assert len(_gallery(app)) == 3 and app.session_state["space_image"] == box["image"].iloc[0]
    _select_on_map(app, app.get("vega_lite_chart")[1], boxed={"x": [box["x"].min() - 2, box["x"].min() - 1],
                                                              "y": [second["y"].min(), second["y"].max()]})
    assert "**0 selected**: no image inside the box" in [m.value for m in app.markdown] and not _gallery(app)
    app.button(key="space_clear").click().run()
    assert not app.exception and not any(" selected**" in m.value for m in app.markdown)
    assert not any(_map_points(chart)["selected"].any() for chart in app.get("vega_lite_chart"))


def _map_points(chart) -> pd.DataFrame:
    """The points an embedding map draws (its one data set, Arrow bytes in the chart's message)."""
    import pyarrow as pa

    return pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_pandas()


def _select_on_map(app: AppTest, chart, **selection) -> AppTest:
    """Run the page with ``selection`` made on ``chart`` as the browser sends it: the chart's widget state is the JSON
    ``{"selection": {parameter: value}}``, a click's point ``[{"image": ...}]``, a box ``{"x": [..], "y": [..]}``
    and ``{}`` once cleared (seen from Chromium). AppTest has no chart widget to drive, so the state is added to the
    others'."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    states = app._tree.get_widget_states()
    states.widgets.append(WidgetState(id=chart.proto.id, string_value=json.dumps({"selection": selection})))
    return app._run(states)


def _gallery(app: AppTest) -> list[str]:
    """The captions of the images selected on a map (each starts with the image's id and names its reader age),
    sorted (the tree lists the gallery column by column)."""
    captions = [image.caption for element in app.get("image") for image in element.proto.imgs]
    return sorted(c for c in captions if " · reader " in c)


@pytest.mark.slow
def test_review_draws_a_heat_map_for_a_vit_whose_weights_are_here(app, tiny_timm_dir):
    model = f"local-dir:{tiny_timm_dir}"
    app.sidebar.text_input(key="extra_model").input(model)
    _run(app, encoders=[ENCODERS[0]])
    app.switch_page("views/review.py").run()
    assert not app.exception
    app.session_state["space_image"] = pd.read_csv(os.environ["OTOLITH_DATA"]).path[0]
    app.run()
    assert app.selectbox(key="seen_encoder").options == [model]  # the built-in has no patch tokens
    images_before = len(app.get("image"))
    app.button(key="seen_show").click().run()
    assert not app.exception
    assert len(app.get("image")) == images_before + 1
    assert any("(4 x 4 patches)" in str(getattr(i, "proto", "")) for i in app.get("image"))
    assert any("Each patch's token" in c.value for c in app.caption)


@pytest.mark.slow
def test_review_counts_a_manifests_second_age_as_the_second_reader(demo_manifest, demo_cache, tmp_path, monkeypatch,
                                                                   media_stores):
    """A manifest loaded back with a ``second_age`` column (or a lab's own double reading): the page counts it
    as the second reader, and it is never offered as a covariate."""
    rows = pd.read_csv(demo_manifest)
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    rows["second_age"] = ""
    rows.loc[:9, "second_age"] = rows.age[:10].astype(str)
    rows.loc[:1, "second_age"] = (rows.age[:2] + 1).astype(str)
    manifest = tmp_path / "double_read.csv"
    rows.to_csv(manifest, index=False)
    at = _logistic_review(manifest, demo_cache, tmp_path, monkeypatch)
    assert "length" in at.sidebar.multiselect(key="covariates").options
    assert "second_age" not in at.sidebar.multiselect(key="covariates").options
    summary = next(m.value for m in at.markdown if "read twice" in m.value)
    assert "**10 images read twice** (10 from the manifest’s second_age)" in summary
    assert "80% the same age" in summary


def test_data_page_warns_when_the_covariates_alone_read_the_ages(demo_manifest, tmp_path, monkeypatch, media_stores):
    rows = pd.read_csv(demo_manifest)
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    rows["otolith_weight"] = rows["age"] * 0.13  # derived from the reader's age: a leak under another name
    rows.to_csv(tmp_path / "survey.csv", index=False)
    app = _started(tmp_path / "survey.csv", tmp_path, monkeypatch)
    app.sidebar.multiselect(key="covariates").set_value(["length"])
    app.switch_page("views/data.py").run()
    assert not app.exception and not any("covariates alone" in w.value for w in app.warning)
    app.sidebar.multiselect(key="covariates").set_value(["otolith_weight"]).run()
    assert any("covariates alone (otolith_weight) read 100%" in w.value for w in app.warning)


@pytest.mark.slow
def test_a_run_press_is_never_lost_when_the_page_reruns_itself(app, monkeypatch):
    """A press of Run whose script run is cut short before the sidebar handles it (the page rerunning itself: a
    job this session saw running has just ended, or the status area's timer preempting the run; here the run is
    stopped at the status area) still starts the run at the next script run: the press used to be dropped with
    the interrupted run."""
    import streamlit as st

    from views import jobs as page_jobs

    app.sidebar.multiselect(key="encoders").set_value(ENCODERS)
    app.sidebar.multiselect(key="heads").set_value(["ridge"])
    app.run()
    app.session_state["jobs_seen_running"] = {"a job that has just ended"}  # the status area reruns the app at once
    app.sidebar.button(key="run").click().run()
    assert not app.exception
    app.switch_page("views/results.py").run()
    _settle(app)
    assert not [i.value for i in app.info if "Press **Run comparison**" in i.value]
    assert set(app.dataframe[0].value.encoder) == {*ENCODERS, "no-skill"}

    app.sidebar.multiselect(key="heads").set_value(["svc"]).run()  # new settings: a new run must be asked for
    real, cut = page_jobs.status_area, [True]

    def cut_short(cache_dir):
        if cut and cut.pop():
            st.stop()  # the run ends before the Run button below is reached
        real(cache_dir)

    monkeypatch.setattr(page_jobs, "status_area", cut_short)
    app.sidebar.button(key="run").click().run()
    app.run()  # the next script run (the rerun that cut the first short)
    assert not app.exception and not cut
    assert not [i.value for i in app.info if "Press **Run comparison**" in i.value]
    _settle(app)
    assert set(app.dataframe[0].value["head"]) == {"svc", "most-frequent"}


def _run_ridge_on_pixels(app: AppTest, *, folds: int) -> None:
    """Run ridge on pixels-32 with ``folds`` folds from the sidebar, and wait for its extraction job."""
    app.sidebar.multiselect(key="encoders").set_value(["pixels-32"])
    app.sidebar.multiselect(key="heads").set_value(["ridge"])
    app.sidebar.number_input(key="folds").set_value(folds)
    app.run()
    app.sidebar.button(key="run").click().run()
    _settle(app)


def _logistic_review(manifest, demo_cache, tmp_path, monkeypatch) -> AppTest:
    """The Review page after a Run of the logistic head (3 folds: its inner CV is the slow part) on one built-in
    encoder, for ``manifest``, with the demo's embeddings cached."""
    shutil.copytree(demo_cache, tmp_path / "cache")
    at = _started(manifest, tmp_path, monkeypatch)
    at.sidebar.multiselect(key="encoders").set_value([ENCODERS[0]])
    at.sidebar.multiselect(key="heads").set_value(["logistic"])
    at.sidebar.number_input(key="folds").set_value(3)
    at.run()
    at.switch_page("views/review.py").run()
    at.sidebar.button(key="run").click().run()
    return _settle(at)


@pytest.mark.slow
def test_the_data_room_maps_a_lab_exports_columns_and_shows_a_trays_boxes(tmp_path, monkeypatch, media_stores,
                                                                          photo_server):
    """The export names its trays by presigned URLs. The column pickers come prefilled from the export (image column,
    box column); the Data page says the photos are not downloaded yet, downloads one on request and shows it with
    its boxes; an id column picked renames every image; the run uses the mapping (its extraction job too, which
    downloads the other tray, once), and the URL carries it, so a reload comes back with it."""
    export = write_tray_export(photo_server.folder, boxes_per_tray=12, base_url=photo_server.url)
    app = _started(export, tmp_path, monkeypatch)
    sidebar = app.sidebar
    assert sidebar.selectbox(key="col_path").value == "image__content__url"
    assert sidebar.selectbox(key="col_box").value == "bounding_box" and sidebar.selectbox(key="col_id").value == ""
    sidebar.selectbox(key="col_id").set_value("measurement_id")
    app.switch_page("views/data.py").run()
    assert not app.exception
    assert any(m.value == 24 or m.value == "24" for m in app.metric)
    assert any("2 photos are behind URLs**: 0 downloaded" in i.value for i in app.info)
    app.button(key="download_tray").click().run()
    assert not app.exception and photo_server.requests == {"tray0.jpg": 1}
    assert any("tray0.jpg: 12 boxes and their ids" in str(image.proto) for image in app.get("image"))
    assert "measurement_id" not in app.sidebar.multiselect(key="covariates").options  # names rows, not fish
    _run_ridge_on_pixels(app, folds=2)
    (job,) = [j for j in list_jobs(os.environ["OTOLITH_CACHE_DIR"]) if j.kind == "extraction"]
    assert job.state == "finished" and job.request.columns["id"] == "measurement_id"
    assert photo_server.requests == {"tray0.jpg": 1, "tray1.jpg": 1}
    app.run()  # the job downloaded tray1: the run asked for is still this run (it used to read as an old one)
    assert any(c.value == "The Results and Errors pages show this run." for c in app.sidebar.caption)
    assert app.query_params["run"] == "1"
    app.switch_page("views/errors.py").run()
    assert not app.exception
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert set(app.dataframe[0].value.encoder) == {"pixels-32", "no-skill"}
    url = dict(app.query_params)
    assert url["col_box"] == "bounding_box" and url["col_id"] == "measurement_id"
    reloaded = _session()
    for key, value in url.items():
        reloaded.query_params[key] = value
    reloaded.run()
    assert not reloaded.exception and reloaded.sidebar.selectbox(key="col_id").value == "measurement_id"


def test_the_column_pickers_follow_the_file_typed(demo_manifest, tmp_path, monkeypatch, media_stores):
    """Typing an export's path after the demo's manifest: every picker takes the export's guess (the demo's
    'no box column' must not stay); typing the demo's path again gives its own columns back."""
    app = _started(demo_manifest, tmp_path, monkeypatch)
    assert app.sidebar.selectbox(key="col_box").value == ""
    export = write_tray_export(tmp_path, boxes_per_tray=3)
    app.sidebar.text_input(key="data_path").set_value(str(export)).run()
    assert not app.exception
    picked = {key: app.sidebar.selectbox(key=key).value for key in ("col_path", "col_age", "col_box", "col_id")}
    assert picked == {"col_path": "image__content__url", "col_age": "age", "col_box": "bounding_box", "col_id": ""}
    app.sidebar.text_input(key="data_path").set_value(str(demo_manifest)).run()
    assert app.sidebar.selectbox(key="col_path").value == "path" and app.sidebar.selectbox(key="col_box").value == ""


@pytest.mark.slow
def test_review_says_how_many_images_could_not_be_scored_and_why(demo_manifest, demo_cache, tmp_path, monkeypatch,
                                                                 media_stores):
    """The issue's demo: one age-10 fish kept. No training fold that left it out held age 10, so its photos are
    not scored (they used to score 1.0 and top the list): the page counts them and says why, and the ranking
    lists them last, unranked; the score filter and the gallery skip them even at a score of at least 0."""
    rows = pd.read_csv(demo_manifest)
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    kept = rows[rows.age == 10].fish_id.value_counts().index[0]  # a fish photographed twice
    rows = rows[(rows.age != 10) | (rows.fish_id == kept)]
    manifest = tmp_path / "one_old_fish.csv"
    rows.to_csv(manifest, index=False)
    at = _logistic_review(manifest, demo_cache, tmp_path, monkeypatch)
    said = next(i.value for i in at.info if "could not be scored" in i.value)
    assert "**2 images could not be scored**" in said
    assert "2 × age 10 was in no training fold that left this image out (only 1 fish of that age)" in said
    ranking = at.dataframe[0].value
    assert set(ranking.path.tail(2)) == set(rows.path[rows.fish_id == kept])
    assert ranking["score"].tail(2).isna().all() and ranking["rank"].tail(2).isna().all()
    assert ranking["score"].head(len(ranking) - 2).is_monotonic_decreasing
    at.slider(key="review_min_score").set_value(0.0).run()
    assert not at.exception
    assert any(c.value.startswith(f"{len(ranking) - 2} of {len(ranking) - 2} scored images") for c in at.caption)
    assert not any("nan" in str(c.value) for c in at.caption)


@pytest.mark.slow
def test_station_grouping_and_a_cruise_hold_out_from_the_sidebar_reach_the_comparison(tmp_path, monkeypatch,
                                                                                      media_stores):
    """A lab export of 6 trays (stations ST0..ST5 in cruises C0..C2): the sidebar offers its columns to keep together
    and to hold out (no id, no age); station-grouped folds keep each station in one fold, and a cruise hold-out tests
    each cruise once, its score beside the pooled one; the URL carries both, and the Results caption says so."""
    app = _started(write_tray_export(tmp_path, boxes_per_tray=4, trays=6, cruises=3), tmp_path, monkeypatch)
    grouping, holdout = app.sidebar.selectbox(key="grouping"), app.sidebar.selectbox(key="holdout")
    assert grouping.value == "auto" and {"each station_id", "each cruise_id", "each image__content__url"} <= set(
        grouping.options)  # labels; the path column: the tray photo
    assert not {"each measurement_id", "each age"} & set(grouping.options)  # an id groups nothing; age: the answer
    assert {"(none: stratified k-fold)", "station_id", "cruise_id"} <= set(holdout.options)
    assert not {"measurement_id", "age", "image__content__url"} & set(holdout.options)
    grouping.set_value("column:station_id")
    _run_ridge_on_pixels(app, folds=3)
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert any("3-fold stratified, folds keep each station_id together" in s.value for s in app.subheader)
    predictions = pd.read_csv(io.BytesIO(_download(app, media_stores, "predictions.csv")))
    tray = predictions.path.str.extract(r"tray(\d)")[0]  # tray t was taken at station ST<t>
    assert predictions.groupby(tray)["fold"].nunique().eq(1).all() and predictions.fold.nunique() == 3
    assert app.query_params["grouping"] == "column:station_id"

    app.sidebar.selectbox(key="holdout").set_value("cruise_id").run()
    assert app.sidebar.number_input(key="folds").disabled and app.sidebar.number_input(key="repeats").disabled
    app.sidebar.button(key="run").click().run()
    _settle(app)
    assert any("leave-one-cruise_id-out: 3 folds, one per value" in s.value for s in app.subheader)
    per_value = next(d.value for d in app.dataframe if "model" in d.value.columns)
    assert [c.split(" (")[0] for c in per_value.columns] == ["model", "C0", "C1", "C2", "all values pooled"]
    folds = pd.read_csv(io.BytesIO(_download(app, media_stores, "folds.csv")))
    assert sorted(folds.held_out.unique()) == ["C0", "C1", "C2"]
    run = json.loads(_download(app, media_stores, "run.json"))
    assert run["cv"]["holdout_column"] == "cruise_id" and run["cv"]["group_column"] == "station_id"
    assert app.query_params["holdout"] == "cruise_id"
    reloaded = _session()  # a reloaded tab: both pickers come back from the URL
    for key, value in dict(app.query_params).items():
        reloaded.query_params[key] = value
    reloaded.run()
    assert not reloaded.exception
    assert reloaded.sidebar.selectbox(key="grouping").value == "column:station_id"
    assert reloaded.sidebar.selectbox(key="holdout").value == "cruise_id"


@pytest.mark.slow
def test_tie_level_marks_results_without_recomputing_and_fish_scores_follow_the_grouping(app, media_stores,
                                                                                        monkeypatch):
    """The demo photographs some fish twice: Results shows a score per fish beside the one per photo. The sidebar's
    tie level marks the table, the charts and summary.csv again without computing the comparison, follows the run
    (no new Run press) and is in the URL and run.json; with the photos treated as independent, the fish-level scores
    are refused with the reason."""
    app.sidebar.multiselect(key="encoders").set_value(["pixels-32"])
    app.sidebar.multiselect(key="heads").set_value(["ridge", "svc"])
    app.sidebar.number_input(key="folds").set_value(3)
    app.run().sidebar.button(key="run").click().run()
    _settle(app)
    app.switch_page("views/results.py").run()
    assert not app.exception
    per_fish = next(d.value for d in app.dataframe if "Accuracy per fish" in d.value.columns)
    assert list(per_fish["head"]) == ["ridge", "svc", "most-frequent"] and "Accuracy per photo" in per_fish.columns
    assert any("median of the photos' predicted ages" in c.value for c in app.caption)
    assert any("level 0.05" in c.value and "Holm" in c.value for c in app.caption)

    jobs_before = _comparison_jobs()
    app.sidebar.number_input(key="tie_level").set_value(0.5).run()
    assert not app.exception and _comparison_jobs() == jobs_before  # the marks change, nothing is computed again
    assert app.query_params["tie_level"] == "0.5" and app.query_params["run"] == "1"
    assert any("level 0.5" in c.value for c in app.caption)
    summary = pd.read_csv(io.BytesIO(_download(app, media_stores, "summary.csv")))
    run = json.loads(_download(app, media_stores, "run.json"))
    assert run["ties"]["level"] == 0.5 and run["fish_level"]["written"]
    shown = app.dataframe[0].value
    for row, expected in zip(shown.itertuples(), summary.itertuples()):
        assert row.Accuracy.endswith((" ★", " ●")) == (expected.accuracy_tied_with_best is True)

    app.sidebar.selectbox(key="grouping").set_value("images").run()
    app.sidebar.button(key="run").click().run()
    _settle(app)
    assert any("not grouped by fish" in i.value for i in app.info)
    assert not any("Accuracy per fish" in d.value.columns for d in app.dataframe)


def _review_with_ridge(at):
    """Review on the morphometrics with ridge (no class probabilities: no ranking), 5 folds."""
    at.sidebar.multiselect(key="encoders").set_value([ENCODERS[0]])
    at.sidebar.multiselect(key="heads").set_value(["ridge"])
    at.sidebar.number_input(key="folds").set_value(5)
    at.run()
    at.switch_page("views/review.py").run()
    return at


@pytest.mark.slow
def test_two_readers_read_blind_in_a_seeded_order_with_flags_and_the_exchange_report_follows(app, demo_manifest,
                                                                                            media_stores):
    """Without a logistic run the images are read in the seeded order; an age button saves the reading with its
    flags and comment at once; a second reader in another tab resumes at their own first unread image and sees no
    age of the first reader's until having read the image; the exchange report puts both beside the model."""
    from otolith_core.readings import load_readings
    from otolith_core.review import seeded_order
    from views.reading import NEW_READER

    first_tab = _review_with_ridge(app)
    first_tab.sidebar.button(key="run").click().run()
    _settle(first_tab)
    n = len(pd.read_csv(demo_manifest))
    assert any("read in a seeded order" in i.value for i in first_tab.info)
    assert f"{n} images to read; choose a reader" in [c.value for c in first_tab.caption]
    first_tab.text_input(key="reader_name").input("A").run()
    order = seeded_order(_images(demo_manifest), 0)
    assert first_tab.session_state["review_image"] == order[0] and f"0 of {n} read by you" in _captions(first_tab)
    assert not first_tab.main.success
    age = 1 if _ages(demo_manifest)[order[0]] != 1 else 2
    first_tab.checkbox(key=f"flag_uncertain-{order[0]}").check()
    first_tab.text_input(key=f"comment-{order[0]}").input("faint rings")
    first_tab.button(key=f"age_button-{age}").click().run()
    assert not first_tab.exception and "The reader's age was" in first_tab.main.success[0].value
    assert f"1 of {n} read by you" in _captions(first_tab)
    first_tab.button(key="review_next").click().run()
    assert first_tab.session_state["review_image"] == order[1]
    first_tab.button(key=f"save_unusable-{order[1]}").click().run()
    saved = load_readings(os.environ["OTOLITH_CACHE_DIR"])
    assert saved[["image", "reader", "flags", "comment"]].values.tolist() == [
        [order[0], "A", "uncertain", "faint rings"], [order[1], "A", "unusable", ""]]
    assert saved["second_age"].tolist()[0] == age and pd.isna(saved["second_age"].tolist()[1])

    second_tab = _review_with_ridge(_session().run())  # a new session: no job
    assert second_tab.selectbox(key="reader_pick").options == ["A", NEW_READER]
    second_tab.text_input(key="reader_name").input("B").run()
    assert second_tab.session_state["review_image"] == order[0] and f"0 of {n} read by you" in _captions(second_tab)
    assert not any("A" in d.value.columns for d in second_tab.dataframe if "reader" not in d.value.columns)
    downloads = {b.proto.label: b.proto for b in second_tab.get("download_button")}
    assert downloads["second_readings.csv"].disabled  # it would hold A's ages: B has read nothing yet
    manifest = pd.read_csv(io.BytesIO(_download(second_tab, media_stores, "manifest with second_age")))
    assert manifest["second_age"].isna().all()
    second_tab.number_input(key=f"second_age-{order[0]}").set_value(age + 1)
    next(b for b in second_tab.button if b.label == "Save reading").click().run()
    assert not second_tab.exception
    assert "other readers: A: " + str(age) in second_tab.main.success[0].value  # seen once B has read it
    readers = next(d.value for d in second_tab.dataframe if "modal_age" in d.value.columns)
    row = readers.set_index("image").loc[order[0]]
    assert (row["A"], row["B"]) == (age, age + 1) and list(readers["image"]) == [order[0]]
    report = next(d.value for d in second_tab.dataframe if "agreement_with_mode_pct" in d.value.columns)
    assert {"A", "B", "otolith-morphometrics / ridge"} <= set(report["reader"])
    typed = pd.read_csv(io.BytesIO(_download(second_tab, media_stores, "second_readings.csv")))
    assert typed["image"].tolist() == [order[0], order[0]] and typed["reader"].tolist() == ["A", "B"]  # not order[1]


def _images(manifest) -> list[str]:
    from otolith_core.data import load_dataset

    return [r.id for r in load_dataset(manifest).records]


def _ages(manifest) -> dict[str, int]:
    from otolith_core.data import load_dataset

    return {r.id: r.read_age for r in load_dataset(manifest).records}


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


@pytest.mark.slow
def test_images_flagged_unusable_are_listed_and_the_sidebar_switch_leaves_them_out_of_the_run(app, demo_manifest):
    from otolith_core.data import load_dataset
    from otolith_core.readings import add_reading

    records = load_dataset(demo_manifest).records
    add_reading(os.environ["OTOLITH_CACHE_DIR"], records[3], None, reader="A", flags=["unusable"], comment="cracked")
    app.run()
    assert app.sidebar.checkbox(key="exclude_unusable").label == "Leave out images flagged unusable (1)"
    flagged = next(d.value for d in app.dataframe if "why" in d.value.columns)  # the Data page lists it
    assert flagged.values.tolist() == [[records[3].id, "flagged unusable by A (cracked)"]]
    assert any("still in the run" in m.value for m in app.markdown)
    app.sidebar.checkbox(key="exclude_unusable").check()
    app.sidebar.multiselect(key="encoders").set_value([ENCODERS[0]])
    app.sidebar.multiselect(key="heads").set_value(["ridge"])
    app.sidebar.number_input(key="folds").set_value(5)
    app.run()
    app.sidebar.button(key="run").click().run()
    _settle(app)
    assert app.query_params.get("exclude_unusable") in ("1", ["1"])
    app.switch_page("views/results.py").run()
    assert not app.exception
    assert set(app.dataframe[0].value["images"]) == {len(records) - 1}
    app.switch_page("views/data.py").run()
    assert any("leaves them out of the run" in m.value for m in app.markdown)
    skipped = next(d.value for d in app.dataframe if "reason" in d.value.columns)
    assert "flagged unusable by A (cracked)" in set(skipped["reason"])


@pytest.mark.slow
def test_an_extraction_in_shards_from_the_embeddings_page_lists_each_shard_on_its_card(demo_manifest, demo_cache,
                                                                                       tmp_path, monkeypatch,
                                                                                       media_stores):
    n = len(pd.read_csv(demo_manifest))
    copy_cache_lacking(demo_cache, demo_manifest, tmp_path / "cache", {"pixels-32": None})
    app = _started(demo_manifest, tmp_path, monkeypatch)
    app.sidebar.multiselect(key="encoders").set_value(["pixels-32"]).run()
    app.switch_page("views/embeddings.py").run()
    app.radio(key="extract_where").set_value("local").run()
    app.number_input(key="extract_shards").set_value(3).run()
    assert app.query_params["extract_where"] == "local" and app.query_params["extract_shards"] == "3"
    app.button(key="start-pixels-32").click().run()
    wait_for_jobs(tmp_path / "cache")
    app.run()
    assert not app.exception
    card = next(s.value for s in app.success if "pixels-32" in s.value)
    assert "in 3 shards (local)" in card and f"finished: {n} images ({n} extracted now" in card
    shards = app.dataframe[0].value
    assert shards["shard"].tolist() == [0, 1, 2] and set(shards["state"]) == {"finished"}
    assert sum(int(text.split(" / ")[0]) for text in shards["images"]) == n
    assert any(f"{n} of {n} images cached" in m.value for m in app.markdown)
