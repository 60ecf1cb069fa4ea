"""Embeddings page: what is cached per encoder, and extraction with progress (downloads ask first)."""

import pandas as pd
import streamlit as st

from otolith_core.feature_extractor import EncoderUnavailable, weights_available
from views.common import cached_count, current_data, data_key, encoder_spec, extract_with_progress

st.title("Embeddings")
settings, dataset = current_data()
if not settings.encoders:
    st.info("Choose one or more encoders in the sidebar.")
    st.stop()

st.caption(f"Cache: `{settings.cache_dir}`. Embeddings are computed once per encoder and image; an interrupted "
           "extraction keeps every finished batch.")
rows = []
key = data_key(settings.data_path, settings.age_range)
for name in settings.encoders:
    try:
        spec = encoder_spec(name)
    except (KeyError, ValueError, FileNotFoundError, EncoderUnavailable) as exc:
        st.error(f"**{name}**: {exc.args[0] if isinstance(exc, KeyError) else exc}")
        continue
    n_cached = cached_count(key, name, dataset, settings.cache_dir)
    here = weights_available(spec)
    precision = "numpy float32" if spec.loader == "builtin" else f"{spec.precision.cpu} / {spec.precision.cuda}"
    rows.append({"encoder": name, "cached": f"{n_cached} / {len(dataset)}", "year": spec.year, "dim": spec.embed_dim,
                 "precision (CPU / GPU)": precision,
                 "weights": "here" if here else f"download {spec.download_size}", "description": spec.description})
    with st.container(border=True):
        st.markdown(f"**{name}** — {n_cached} of {len(dataset)} images cached")
        if n_cached >= len(dataset):
            continue
        label = f"Extract {len(dataset) - n_cached} images" if here else \
            f"Download {spec.download_size} of weights and extract {len(dataset) - n_cached} images"
        if not here:
            st.caption("The weights are not on this computer yet; they are downloaded once into the Hugging Face cache.")
        if st.button(label, key=f"extract-{name}"):
            try:
                result = extract_with_progress(settings, dataset, name)
            except EncoderUnavailable as exc:
                st.error(str(exc))
                continue
            st.success(f"{name}: {result.n_extracted} images extracted ({result.precision}), "
                       f"{len(result.failures)} failed.")
            for failure in result.failures[:50]:
                st.caption(f"skipped `{failure.path}`: {failure.reason}")
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
