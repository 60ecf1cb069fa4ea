"""The comparison the Results and Errors pages show: stored on disk, computed now, or waiting for extraction.

Nothing is extracted here. A requested run whose encoders are not all embedded shows their jobs'
progress and waits; the sidebar's job status area reruns the page when a job ends, and the
comparison is then computed once and stored on disk under a key naming its data, embeddings, heads
and CV settings, so a reloaded tab or a restarted dashboard shows it again without computing.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from otolith_core.data import Dataset
from otolith_core.comparison import Comparison
from views import cached, jobs, state
from views.state import Settings


@dataclass(frozen=True)
class Shown:
    """A comparison with the settings and data it was computed from."""

    settings: Settings
    dataset: Dataset
    comparison: Comparison


def current_comparison() -> Shown | None:
    """The comparison for the requested run (or a stored one for the sidebar's settings); None after saying why."""
    requested = state.requested_run()
    settings = requested or state.settings()
    if settings is None:
        st.info("Choose data, encoders and heads in the sidebar, then press **Run comparison**.")
        return None
    try:
        data = cached.dataset(settings)
    except (ValueError, FileNotFoundError) as exc:
        st.error(f"Cannot read the data: {exc}")
        return None
    specs, problems = cached.resolve(settings.encoders)
    embeddings = cached.cached_embeddings(settings, data, specs)
    incomplete = {name: e for name, (e, _) in embeddings.items() if e.pending}
    if incomplete and requested is None:
        st.info("Press **Run comparison** in the sidebar: it extracts what is missing, then cross-validates.")
        return None
    waiting = False
    for name, embedding in incomplete.items():
        job = jobs.job_for(settings, name)
        if job is not None and job.active:
            waiting = True
            continue
        problems[name] = _why_incomplete(name, job, len(embedding.pending))
    if waiting:
        _draw_waiting(settings, data, incomplete, problems)
        return None
    ready = {name: e for name, (e, _) in embeddings.items() if name not in incomplete and len(e.rows)}
    for name, (e, _) in embeddings.items():
        if name not in incomplete and not len(e.rows):
            problems[name] = "no image could be embedded (the Data page lists why)"
    for name, problem in problems.items():
        st.warning(f"**{name}** is left out: {problem}")
        if name in incomplete:
            jobs.start_button(settings, name, len(incomplete[name].pending))
    if not ready:
        st.error("No encoder could be evaluated; see the messages above.")
        return None
    key = cached.comparison_key(settings, {name: embeddings[name] for name in ready})
    comparison = cached.stored_comparison(key, settings.cache_dir)
    if comparison is None:
        if requested is None:
            st.info("Press **Run comparison** in the sidebar to cross-validate these settings.")
            return None
        try:
            comparison = cached.compute_comparison(key, settings, data, ready, problems)
        except ValueError as exc:
            st.error(f"Cross-validation cannot run: {exc}")
            return None
    return Shown(settings, data, comparison)


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


def _draw_waiting(settings: Settings, data: Dataset, incomplete: dict, problems: dict[str, str]) -> None:
    st.info("**Waiting for extraction.** The comparison runs by itself when these jobs finish; you can change "
            "pages, close the tab or restart the dashboard meanwhile (the jobs go on).")
    st.fragment(_waiting_cards, run_every=jobs.REFRESH_SECONDS)(settings, tuple(incomplete))
    for name, problem in problems.items():
        st.warning(f"**{name}**: {problem}")
        if name in incomplete:
            jobs.start_button(settings, name, len(incomplete[name].pending))


def _waiting_cards(settings: Settings, names: tuple[str, ...]) -> None:
    for name in names:
        job = jobs.job_for(settings, name)
        if job is not None:
            jobs.job_card(job, key="waiting-")
