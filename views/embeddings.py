"""Embeddings page: what is cached per encoder, and extraction jobs (downloads ask first)."""

import pandas as pd
import streamlit as st

from otolith_core.cluster import require
from views import cached, jobs, state
from views.widgets import settings_and_data

st.title("Embeddings")
settings, dataset = settings_and_data()
if not settings.encoders:
    st.info("Choose one or more encoders in the sidebar.")
    st.stop()

st.caption(f"Cache: `{settings.cache_dir}`. Embeddings are computed once per encoder and image, by background jobs "
           "that go on when you change pages or close the tab; a stopped job keeps every finished batch.")
with st.expander("Where extractions run", expanded=bool(st.session_state.get("extract_where"))):
    where = st.radio("Extraction jobs started from now on run", list(state.EXTRACTION_PLACES),
                     format_func=state.EXTRACTION_PLACES.get, key="extract_where")
    if where:
        st.number_input("Shards", min_value=1, max_value=4096, step=1, key=state.initial("extract_shards", 4),
                        help="Each shard embeds its share of the images into a folder of its own; they are merged "
                             "into the cache when they end (README: Beyond one machine).")
    if where in ("slurm", "ray"):
        st.text_input("Cluster settings (a TOML file)", key="extract_cluster_config",
                      placeholder="/shared/otoliths/cluster.toml",
                      help="partition, gpus_per_task, cpus_per_task, mem_gb, time_minutes, array_parallelism, "
                           "account, qos, ray_address; unset keys take their defaults.")
        try:
            require(where)
        except ImportError as exc:
            st.warning(str(exc))
        st.caption("The data, this cache folder and the weights must lie on storage every node sees, and the weights "
                   "must be downloaded already (compute nodes are often offline); the job checks both before it "
                   "submits anything and says what is wrong on its card.")
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
