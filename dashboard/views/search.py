"""Search: "did we ever send anything to this address, and who else saw it" — by address (hashed
here, never sent in clear), domain, service, campaign, Message-ID and time range, paginated."""

from __future__ import annotations

import datetime as dt
import math

import streamlit as st

from mailaudit.config import ConfigError
from mailaudit.dashboard import lookup, queries, ui

ctx = ui.context()
ui.page_header("Search", "Messages by address, domain, service, campaign or Message-ID · an address is hashed "
                         "with the key on this server and only the hash is sent to ClickHouse")

PAGE_SIZE = 50
now = ui.now_s()
services = ui.cached(ctx, queries.known_services, 0)
today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()

with st.form("search_form", border=True):
    r1 = st.columns([2.2, 1.4, 1.2, 1.2])
    address = r1[0].text_input("Address", placeholder="name@example.com", key="q_address")
    domain = r1[1].text_input("Domain", placeholder="example.com", key="q_domain")
    service = r1[2].selectbox("Service", ["Any"] + services, key="q_service")
    campaign = r1[3].text_input("Campaign", key="q_campaign")
    r2 = st.columns([2.2, 1.4, 1.2, 1.2])
    message_id = r2[0].text_input("Message-ID", placeholder="<id@host>", key="q_mid")
    periods = list(ui.PERIODS) + ["Custom range"]
    period = r2[1].selectbox("Period", periods, index=periods.index("Last 7 days"), key="q_period")
    start = r2[2].date_input("From (custom)", value=today - dt.timedelta(days=7), key="q_from")
    end = r2[3].date_input("To (custom)", value=today, key="q_to")
    submitted = st.form_submit_button("Search", type="primary", icon=":material/search:")

if submitted:
    try:
        hashes = lookup.address_hashes(ctx.cfg.privacy, address) if address.strip() else ()
    except (lookup.SearchInputError, ConfigError) as e:
        st.session_state.pop("search_filters", None)
        st.error(ui.esc(str(e)))
        st.stop()
    if period == "Custom range":
        since, until = ui.utc_from_date(start), ui.utc_from_date(end, end=True)
    else:
        since, until = ui.period_since(period, now), now + 60
    f = queries.SearchFilters(since_s=since, until_s=until, address_hashes=hashes,
                              domain=domain.strip() or None, service=None if service == "Any" else service,
                              campaign=campaign.strip() or None, message_id=message_id.strip() or None)
    if f.empty():
        st.session_state.pop("search_filters", None)
        st.warning("Enter at least one of address, domain, service, campaign or Message-ID.")
        st.stop()
    st.session_state["search_filters"] = f
    st.session_state["search_page"] = 0

f: queries.SearchFilters | None = st.session_state.get("search_filters")
if f is None:
    st.info("Results appear here. Searching by address answers \"did we ever send to this address, and where "
            "did it appear\": as a recipient, or shown in To/Cc/Bcc of someone else's copy.",
            icon=":material/info:")
    st.stop()

ids = ui.cached(ctx, queries.search_ids, f)
more = len(ids) > queries.SEARCH_CAP
ids = ids.iloc[:queries.SEARCH_CAP]
total = len(ids)
if total == 0:
    st.info("No message matches.")
    st.stop()
pages = max(1, math.ceil(total / PAGE_SIZE))
page = min(st.session_state.get("search_page", 0), pages - 1)
rows = queries.search_rows(ctx.db, ids.iloc[page * PAGE_SIZE:(page + 1) * PAGE_SIZE], f.address_hashes)

head = st.columns([5, 1, 1.3, 1])
label = (f"More than {ui.fmt_int(queries.SEARCH_CAP)} messages: the newest {ui.fmt_int(queries.SEARCH_CAP)} "
         "are listed; narrow the search" if more else f"{ui.fmt_int(total)} messages, newest first")
head[0].markdown(f"**{ui.esc(label)}**")
if head[1].button("Previous", icon=":material/chevron_left:", disabled=page == 0, width="stretch"):
    st.session_state["search_page"] = page - 1
    st.rerun()
head[2].markdown(f"Page {page + 1} of {pages}")
if head[3].button("Next", icon=":material/chevron_right:", disabled=page >= pages - 1, width="stretch"):
    st.session_state["search_page"] = page + 1
    st.rerun()
if f.address_hashes:
    disclosed = rows["match"].str.contains("To|Cc|Bcc") & ~rows["match"].str.contains("recipient")
    if disclosed.any():
        st.warning(f"On this page the address appears in {int(disclosed.sum())} message(s) it was not sent to: "
                   "shown to their recipients.", icon=":material/visibility:")
st.dataframe(
    rows, hide_index=True, width="stretch",
    column_order=["sent_at", "service", "campaign", "template", "match", "from", "to", "to_count", "cc_count",
                  "recipients", "strangers", "message_id", "event_id"] if f.address_hashes else
                 ["sent_at", "service", "campaign", "template", "from", "to", "to_count", "cc_count", "recipients",
                  "strangers", "message_id", "event_id"],
    column_config={
        "sent_at": st.column_config.DatetimeColumn("sent", format="YYYY-MM-DD HH:mm:ss", timezone="UTC"),
        "match": st.column_config.TextColumn("address appears as", help="recipient (envelope), or shown in To/Cc/Bcc"),
        "from": st.column_config.TextColumn("from (masked)"),
        "to": st.column_config.TextColumn("to (masked)"),
        "to_count": st.column_config.NumberColumn("to"),
        "cc_count": st.column_config.NumberColumn("cc"),
        "recipients": st.column_config.NumberColumn("recipients", help="envelope recipients of this copy"),
        "strangers": st.column_config.NumberColumn("strangers", help="visible addresses that are not recipients"),
    })
