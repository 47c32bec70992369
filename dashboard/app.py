"""Entry point of the dashboard (``streamlit run app.py``; ``mailaudit dashboard`` does it for you).

Navigation is always declared through ``st.navigation``: before sign-in it holds only the login page,
so no other page is reachable by URL until the session has a role. The page scripts live in
``views/``, not ``pages/``: Streamlit runs a ``pages/`` file directly when its URL is the first one a
fresh server sees (the legacy multipage mode), which would skip this entry point and its login gate.
"""

from __future__ import annotations

import streamlit as st

from mailaudit.dashboard import ui

st.set_page_config(page_title="mailaudit", page_icon=":material/shield:", layout="wide",
                   initial_sidebar_state="expanded", menu_items={"Get help": None, "Report a bug": None,
                                                                 "About": "mailaudit — outbound-mail audit log"})

st.logo(ui.LOGO_SVG, size="large")
ctx = ui.bootstrap()
if ctx is None:
    st.navigation([st.Page(ui.login_form, title="Sign in", icon=":material/lock:")], position="hidden").run()
    st.stop()

pages = [
    st.Page("views/live.py", title="Live", icon=":material/monitoring:", default=True),
    st.Page("views/incidents.py", title="Incidents", icon=":material/crisis_alert:"),
    st.Page("views/search.py", title="Search", icon=":material/search:"),
    st.Page("views/services.py", title="Services", icon=":material/dns:"),
]
nav = st.navigation(pages)
ui.sidebar(ctx)
try:
    nav.run()
except ui.STORE_ERRORS as e:
    ui.store_unavailable(e)
