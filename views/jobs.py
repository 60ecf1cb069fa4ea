"""Background jobs from the dashboard: start extractions (with download consent) and comparisons, show and stop them.

The work itself runs in ``otolith extract`` and ``otolith compare-job`` processes (otolith_core.jobs), so
it goes on through widget changes, page switches, a closed tab and a restarted dashboard. This module
only starts them, draws their progress and offers Cancel / Restart. The status area in the sidebar
refreshes itself while a job runs and reruns the page when one ends, so a waiting Results page goes on
by itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import streamlit as st

from otolith_core.embeddings import EmbeddingSet
from otolith_core.jobs import (ComparisonRequest, ExtractionRequest, JobStatus, cancel_job, last_lines, list_jobs,
                               read_job, start_job, warm_up_launcher)
from views import cached
from views import state
from views.state import Settings, allow_download, download_allowed

REFRESH_SECONDS = 2
RECENT_SECONDS = 15 * 60  # ended jobs stay listed this long


def request_for(settings: Settings, encoder: str) -> ExtractionRequest:
    """The extraction job of ``encoder`` for the settings' data, run where the Embeddings page says."""
    place = state.extraction_place()
    return ExtractionRequest(settings.data_path, encoder,
                             columns=None if settings.columns.native else asdict(settings.columns),
                             shards=place.shards, executor=place.executor, cluster_config=place.cluster_config)


def comparison_request(settings: Settings, key: str, ready: dict[str, EmbeddingSet],
                       problems: dict[str, str]) -> ComparisonRequest:
    """The comparison job of the settings' run on the ``ready`` encoders' cached embeddings, stored under ``key``
    (``cached.comparison_key``); ``problems`` names the chosen encoders left out and why."""
    return ComparisonRequest(
        data=settings.data_path, key=key, data_signature=settings.data_signature, encoders=tuple(ready),
        digests={name: e.digest for name, e in ready.items()}, heads=tuple(asdict(h) for h in settings.heads),
        n_folds=settings.n_folds, seed=settings.seed, repeats=settings.repeats, group_by_fish=settings.group_by_fish,
        learning_curve=settings.learning_curve,
        combined=tuple(g for g in settings.combined if all(part in ready for part in g)),
        covariates=settings.covariates, impute_covariates=settings.impute_covariates,
        group_column=settings.group_column, holdout_column=settings.holdout_column, age_range=settings.age_range,
        columns=None if settings.columns.native else asdict(settings.columns), failed_encoders=dict(problems),
        excluded=dict(settings.excluded))


def start_comparison(request: ComparisonRequest, cache_dir: str) -> JobStatus:
    """Start (or join) a comparison job; this session then notices when it ends."""
    job = start_job(request, cache_dir)
    state.set_jobs_seen_running(state.jobs_seen_running() | {job.id})
    return job


def job_for(settings: Settings, encoder: str) -> JobStatus | None:
    """The job extracting ``encoder`` for the settings' data where extractions run now, if one was ever started;
    while another one of the same work runs elsewhere (the place was changed since), that one."""
    request = request_for(settings, encoder)
    job = read_job(settings.cache_dir, request.id)
    if job is not None and job.active:
        return job
    for job_id in state.jobs_seen_running() - {request.id}:  # the status area's running jobs of this run: few
        other = read_job(settings.cache_dir, job_id)
        if other is not None and other.active and other.kind == "extraction" and other.request.same_work(request):
            return other
    return job


def may_start(encoder: str) -> bool:
    """Whether an extraction may start without asking: weights here (or built in), or the user agreed."""
    return cached.weights_here((encoder,)).get(encoder, False) or download_allowed(encoder)


def start(settings: Settings, encoder: str) -> JobStatus:
    """Start (or join) the extraction job of ``encoder``."""
    job = start_job(request_for(settings, encoder), settings.cache_dir)
    state.set_jobs_seen_running(state.jobs_seen_running() | {job.id})
    return job


def start_button(settings: Settings, encoder: str, n_missing: int, *, container=st) -> None:
    """A button that starts the extraction, saying the download size first when weights are not here."""
    spec = cached.encoder_spec(encoder)
    if may_start(encoder):
        label = f"Extract {n_missing} images with {encoder}"
    else:
        label = f"Download {encoder} ({spec.download_size}) and extract {n_missing} images"
    if container.button(label, key=f"start-{encoder}"):
        allow_download(encoder)
        start(settings, encoder)
        st.rerun()


def job_card(job: JobStatus, *, container=st, key: str = "") -> None:
    """Progress, state and the buttons that fit it (Cancel while it runs, Restart after a failure or cancel)."""
    name = job.request.label()
    origin = "" if job.origin == "dashboard" else f" (started in a terminal, pid {job.pid})"
    if job.active:
        container.progress(job.fraction, text=f"{name}: {job.describe()}{origin}")
        _shards(job, container)
        if container.button("Cancel", key=f"cancel-{key}{job.id}",
                            help="Finished batches stay in the cache." if job.kind == "extraction" else
                            "Nothing is stored; Run starts it again from the first fold."):
            cancel_job(job.cache_dir, job.id)
            st.rerun()
        return
    text = f"{name}: {job.describe()}{origin}"
    if job.state == "finished":
        container.success(text, icon=":material/check_circle:")
        _shards(job, container)
        return
    (container.error if job.state == "failed" else container.warning)(text)
    _shards(job, container)
    if job.log_tail:
        with container.expander("Log (last lines)"):
            st.code(job.log_tail, language=None)
    if container.button("Restart", key=f"restart-{key}{job.id}",
                        help="Goes on from what is cached; only missing images are extracted."
                        if job.kind == "extraction" else "Cross-validates again from the first fold."):
        start_job(job.request, job.cache_dir)
        state.set_jobs_seen_running(state.jobs_seen_running() | {job.id})
        st.rerun()


@st.cache_resource(show_spinner=False)
def _launcher_warmed_up() -> bool:
    """Once per dashboard process: the job launcher imports while the user picks settings (see otolith_core.jobs)."""
    warm_up_launcher()
    return True


def status_area(cache_dir: str) -> None:
    """Running and recent jobs of this cache, in the sidebar; refreshes itself while one runs."""
    _launcher_warmed_up()
    running = any(j.active for j in list_jobs(cache_dir))
    with st.sidebar:
        st.fragment(_draw_status, run_every=REFRESH_SECONDS if running else None)(cache_dir)


def _draw_status(cache_dir: str) -> None:
    now = time.time()
    jobs = [j for j in list_jobs(cache_dir) if j.active or now - j.updated < RECENT_SECONDS]
    active = {j.id for j in jobs if j.active}
    ended = state.jobs_seen_running() - active
    state.set_jobs_seen_running(active)
    if not jobs:
        return
    st.header("Jobs")
    for job in jobs:
        job_card(job, key="sidebar-")
    st.divider()
    if ended:  # a job this session saw running has ended: let the page go on with its embeddings
        st.rerun(scope="app")


def _shards(job: JobStatus, container) -> None:
    """An extraction in shards: each shard's images and its state as the scheduler gave it, with its log."""
    if not job.shards:
        return
    import pandas as pd

    table = pd.DataFrame([{"shard": s["index"], "images": f"{s['embedded'] + s['failed']} / {s['images']}",
                           "could not be used": s["failed"], "state": s["state"] + (f": {s['why']}" if s.get("why")
                                                                                    else ""),
                           "job": s.get("job", ""), "log": s.get("log", "")} for s in job.shards])
    with container.expander(f"Shards ({len(table)})"):
        st.dataframe(table, hide_index=True, width="stretch")
        for shard in job.shards:  # a failed shard's own log (on shared storage: the scheduler wrote it there)
            if shard["state"] == "failed" and shard.get("log"):
                st.caption(f"Shard {shard['index']}: the end of {shard['log']}")
                st.code(last_lines(Path(shard["log"])) or "(empty, or not readable from here)", language=None)
