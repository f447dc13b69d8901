"""Entry of the unclip-explorer dashboards: `unclip-explorer dashboard` runs `streamlit run dashboards/app.py`."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

try:
    import dashboards  # noqa: F401  (installed package)
except ImportError:  # a plain checkout: the repository root holds the packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

st.set_page_config(page_title="unclip-explorer", page_icon=":material/explore:", layout="wide")
PAGES = [
    st.Page("views/latent_lab.py", title="Latent lab", icon=":material/science:", default=True),
    st.Page("views/projections.py", title="Projections", icon=":material/scatter_plot:"),
    st.Page("views/binding.py", title="Binding", icon=":material/link:"),
]
st.navigation(PAGES).run()
