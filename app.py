"""Otolith encoder dashboard: `streamlit run app.py`.

The sidebar (views/sidebar.py) is drawn on every page; each page reads the settings (views/state.py), calls
otolith_core through views/cached.py and draws.
"""

import streamlit as st

st.set_page_config(page_title="Otolith encoder dashboard", page_icon=":material/set_meal:", layout="wide")

from views.sidebar import sidebar  # noqa: E402  (after set_page_config)

page = st.navigation([
    st.Page("views/data.py", title="Data", icon=":material/photo_library:", default=True),
    st.Page("views/embeddings.py", title="Embeddings", icon=":material/memory:"),
    st.Page("views/results.py", title="Results", icon=":material/bar_chart:"),
    st.Page("views/errors.py", title="Errors", icon=":material/search:"),
    st.Page("views/review.py", title="Review", icon=":material/rate_review:"),
])
sidebar()
page.run()
