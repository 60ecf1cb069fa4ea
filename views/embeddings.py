"""Embeddings page: what is cached per encoder, and extraction jobs (downloads ask first)."""

import pandas as pd
import streamlit as st

from views import cached, jobs
from views.widgets import settings_and_data

st.title("Embeddings")
settings, dataset = settings_and_data()
if not settings.encoders:
    st.info("Choose one or more encoders in the sidebar.")
    st.stop()

st.caption(f"Cache: `{settings.cache_dir}`. Embeddings are computed once per encoder and image, by background jobs "
           "that go on when you change pages or close the tab; a stopped job keeps every finished batch.")
specs, problems = cached.resolve(settings.encoders)
for name, problem in problems.items():
    st.error(f"**{name}**: {problem}")
embedded = cached.cached_embeddings(settings, dataset, specs)
here = cached.weights_here(tuple(specs))
rows = []
for name, spec in specs.items():
    embedding, _ = embedded[name]
    precision = "numpy float32" if spec.loader == "builtin" else f"{spec.precision.cpu} / {spec.precision.cuda}"
    pre = spec.input_preprocessing
    rows.append({"encoder": name, "cached": f"{len(embedding.rows)} / {len(dataset)}",
                 "unusable": len(embedding.failures), "library": spec.family, "year": spec.year, "dim": spec.embed_dim,
                 "input": f"{pre.size} px {pre.resize_mode}" if pre else "",
                 "variant": spec.variant.suffix or "model's own",
                 "precision (CPU / GPU)": precision,
                 "weights": "here" if here.get(name) else f"download {spec.download_size}",
                 "licence": spec.licence, "description": spec.description})
    with st.container(border=True):
        st.markdown(f"**{name}** — {len(embedding.rows)} of {len(dataset)} images cached"
                    + (f", {len(embedding.failures)} unusable" if embedding.failures else ""))
        job = jobs.job_for(settings, name)
        if job is not None:
            jobs.job_card(job, key="page-")
        if embedding.pending and not (job is not None and job.active):
            if not here.get(name):
                st.caption("The weights are not on this computer yet; they are downloaded once into the Hugging Face "
                           "cache.")
            jobs.start_button(settings, name, len(embedding.pending))
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
