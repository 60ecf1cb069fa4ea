"""The comparison the Results, Errors and Review pages show: stored on disk, being computed by a job, or waiting
for extraction.

Nothing is extracted or fitted here. A requested run whose encoders are not all embedded shows their
extraction jobs' progress and waits. Once they are embedded, :func:`keep_going` (called by the sidebar on
every page) starts the comparison job (``otolith compare-job``), which cross-validates in a process of its
own and stores the result on disk under a key naming its data, embeddings, heads and CV settings. The
pages show its progress meanwhile, and the stored result when it ends, so a reloaded tab or a restarted
dashboard shows it again without computing, and a second tab asking for the same run joins the same job.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from otolith_core.comparison import Comparison
from otolith_core.data import Dataset
from otolith_core.embeddings import EmbeddingSet
from otolith_core.jobs import ComparisonRequest, JobStatus, read_job
from views import cached, jobs, state
from views.state import Settings


@dataclass(frozen=True)
class Shown:
    """A comparison with the settings and data it was computed from."""

    settings: Settings
    dataset: Dataset
    comparison: Comparison
    key: str  # its result key: names everything it was computed from (cached.derived keys start with it)


@dataclass(frozen=True)
class Plan:
    """Where a run stands before its comparison: its data, each encoder's cached embeddings, what is missing."""

    data: Dataset
    incomplete: dict[str, EmbeddingSet]  # encoders with images not embedded yet
    extracting: bool  # an extraction job of one of them is running: the comparison waits for it
    problems: dict[str, str]  # chosen encoders left out (unusable, incomplete without a running job), and why
    ready: dict[str, EmbeddingSet]  # the encoders the comparison runs on
    key: str | None  # the result key of the ready encoders (None: none is ready)

    def request(self, settings: Settings) -> ComparisonRequest:
        return jobs.comparison_request(settings, self.key, self.ready, self.problems)


def plan(settings: Settings) -> Plan:
    """The run's plan; raises ValueError or FileNotFoundError (with a readable message) when the data cannot be read."""
    data = cached.dataset(settings)
    specs, problems = cached.resolve(settings.encoders)
    embeddings = cached.cached_embeddings(settings, data, specs)
    incomplete = {name: e for name, (e, _) in embeddings.items() if e.pending}
    extracting = False
    for name, embedding in incomplete.items():
        job = jobs.job_for(settings, name)
        if job is not None and job.active:
            extracting = True
        else:
            problems[name] = _why_incomplete(name, job, len(embedding.pending))
    ready = {name: e for name, (e, _) in embeddings.items() if name not in incomplete and len(e.rows)}
    for name, (e, _) in embeddings.items():
        if name not in incomplete and not len(e.rows):
            problems[name] = "no image could be embedded (the Data page lists why)"
    key = cached.comparison_key(settings, {name: embeddings[name] for name in ready}) if ready else None
    return Plan(data, incomplete, extracting, problems, ready, key)


def keep_going(requested: Settings, pressed: bool) -> bool:
    """Start the requested run's comparison job when its embeddings are ready and nothing is stored for it yet;
    whether one was started. A job that ended without a result (failed, cancelled) starts again only on a Run
    press (``pressed``), never by itself. Called by the sidebar on every script run of every page, so the
    comparison starts as soon as the last extraction ends, whichever page is open."""
    try:
        run = plan(requested)
    except (ValueError, FileNotFoundError):
        return False  # the pages say what is wrong with the data
    if run.extracting or run.key is None or cached.stored_comparison(run.key, requested.cache_dir) is not None:
        return False
    request = run.request(requested)
    job = read_job(requested.cache_dir, request.id)
    if job is not None and (job.active or not pressed):
        if job.active:
            state.set_jobs_seen_running(state.jobs_seen_running() | {job.id})  # joined: notice when it ends
        return False
    jobs.start_comparison(request, requested.cache_dir)
    return True


def current_comparison() -> Shown | None:
    """The comparison for the requested run (or a stored one for the sidebar's settings); None after saying why."""
    requested = state.requested_run()
    settings = requested or state.settings()
    if settings is None:
        st.info("Choose data, encoders and heads in the sidebar, then press **Run comparison**.")
        return None
    try:
        run = plan(settings)
    except (ValueError, FileNotFoundError) as exc:
        st.error(f"Cannot read the data: {exc}")
        return None
    if run.incomplete and requested is None:
        st.info("Press **Run comparison** in the sidebar: it extracts what is missing, then cross-validates.")
        return None
    if run.extracting:
        _draw_waiting(settings, run)
        return None
    for name, problem in run.problems.items():
        st.warning(f"**{name}** is left out: {problem}")
        if name in run.incomplete:
            jobs.start_button(settings, name, len(run.incomplete[name].pending))
    if not run.ready:
        st.error("No encoder could be evaluated; see the messages above.")
        return None
    comparison = cached.stored_comparison(run.key, settings.cache_dir)
    if comparison is not None:
        return Shown(settings, run.data, comparison, run.key)
    if requested is None:
        st.info("Press **Run comparison** in the sidebar to cross-validate these settings.")
        return None
    request = run.request(settings)
    job = read_job(settings.cache_dir, request.id) or jobs.start_comparison(request, settings.cache_dir)
    if job.active:
        st.info("**Cross-validating in the background.** The results appear here when it ends; you can change "
                "pages, close the tab or restart the dashboard meanwhile (the job goes on).")
        st.fragment(_comparison_card, run_every=jobs.REFRESH_SECONDS)(settings.cache_dir, job.id)
    elif job.state == "finished":  # its result was removed from the store since
        st.warning("This comparison was computed, but its result is no longer in the cache: press **Run "
                   "comparison** to compute it again.")
    else:
        jobs.job_card(job, key="comparison-")
        st.caption("Press **Restart** (or **Run comparison**) to cross-validate again.")
    return None


def _comparison_card(cache_dir: str, job_id: str) -> None:
    """The running comparison's progress; when it has ended, the whole page again, now with its result."""
    job: JobStatus | None = read_job(cache_dir, job_id)
    if job is None or not job.active:
        st.rerun(scope="app")
    jobs.job_card(job, key="comparing-")


def _why_incomplete(name: str, job, n_missing: int) -> str:
    if job is None:
        if not jobs.may_start(name):
            spec = cached.encoder_spec(name)
            return f"needs a download of {spec.download_size} before {n_missing} images can be embedded"
        return f"{n_missing} images are not embedded yet"
    if job.state == "failed":
        return f"extraction failed: {job.reason}"
    if job.state == "cancelled":
        return f"extraction was cancelled with {n_missing} images still missing"
    return f"{n_missing} images are not embedded yet (new since the last extraction)"


def _draw_waiting(settings: Settings, run: Plan) -> None:
    st.info("**Waiting for extraction.** The comparison runs by itself when these jobs finish; you can change "
            "pages, close the tab or restart the dashboard meanwhile (the jobs go on).")
    st.fragment(_waiting_cards, run_every=jobs.REFRESH_SECONDS)(settings, tuple(run.incomplete))
    for name, problem in run.problems.items():
        st.warning(f"**{name}**: {problem}")
        if name in run.incomplete:
            jobs.start_button(settings, name, len(run.incomplete[name].pending))


def _waiting_cards(settings: Settings, names: tuple[str, ...]) -> None:
    for name in names:
        job = jobs.job_for(settings, name)
        if job is not None:
            jobs.job_card(job, key="waiting-")
