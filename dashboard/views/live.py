"""Live: what is being sent right now, and whether anything is wrong (refreshes by itself)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from mailaudit.dashboard import charts, lag, queries, stats, ui

ctx = ui.context()
ui.page_header("Live", "Outbound mail per service and open incidents · refreshes every "
                       f"{ctx.cfg.dashboard.refresh_s} s · UTC")

WINDOWS = {"Last hour": (3600, 60, "%H:%M"), "Last 24 hours": (86400, 900, "%H:%M")}
window = st.segmented_control("Window", list(WINDOWS), default="Last hour", key="live_window",
                              label_visibility="collapsed") or "Last hour"


@st.cache_data(ttl=10, show_spinner=False)
def _lag(bootstrap: str, groups: tuple, _kcfg) -> list | None:
    return lag.consumer_lag(_kcfg, dict(groups), timeout_s=1.0)


@st.fragment(run_every=max(2, int(ctx.cfg.dashboard.refresh_s)))
def live() -> None:
    # A fragment's errors stay inside the fragment, so it reports an unreachable store itself.
    try:
        _live()
    except ui.STORE_ERRORS as e:
        ui.store_unavailable(e)


def _live() -> None:
    span, bucket, tfmt = WINDOWS[window]
    now = ui.now_s()
    since, until = now - span, now + 60
    traffic = queries.traffic(ctx.db, since, until, bucket)
    totals = stats.traffic_totals(traffic)
    open_inc = queries.open_incidents(ctx.db)
    errors = queries.errors_summary(ctx.db, now - 86400)
    k = ctx.cfg.kafka
    lags = _lag(k.bootstrap, ((k.ingest_group, k.topic_events), (k.detect_group, k.topic_events)), k)

    c = st.columns(6)
    # Cards show ui.fmt_card (exact below 10,000, else 3 figures + k/M/B: six cards in a row at 1280 px
    # must not cut a number); the exact figure is in each card's help.
    n_messages, n_recipients = totals["messages"].sum(), totals["recipients"].sum()
    c[0].metric("Messages", ui.fmt_card(n_messages), border=True,
                help=f"{ui.fmt_int(n_messages)} distinct messages sent in the {window.lower()}")
    c[1].metric("Recipients", ui.fmt_card(n_recipients), border=True,
                help=f"{ui.fmt_int(n_recipients)} envelope recipients of those messages")
    c[2].metric("Messages / s", ui.fmt_rate(stats.recent_rate(traffic, (now // bucket) * bucket, 5 * bucket)),
                border=True, help=f"all services, last {5 * bucket // 60} complete minutes")
    critical = int((open_inc["severity"] == "critical").sum()) if not open_inc.empty else 0
    c[3].metric("Open incidents", ui.fmt_card(len(open_inc)), border=True,
                delta=f"{critical} critical" if critical else None, delta_color="inverse", delta_arrow="off")
    c[4].metric("DLQ · 24 h", ui.fmt_card(errors["recent"]), border=True,
                help=f"{ui.fmt_int(errors['recent'])} events rejected to the DLQ; {ui.fmt_int(errors['total'])} kept "
                     "in the errors table")
    if lags is None:
        c[5].metric("Consumer lag", "–", border=True, help="Kafka not reachable from the dashboard")
    else:
        by_group = {x.group: x.records for x in lags}
        c[5].metric("Consumer lag", ui.fmt_card(by_group.get(k.ingest_group, 0)), border=True,
                    help=f"{ui.fmt_int(by_group.get(k.ingest_group, 0))} records of mail.headers not yet stored "
                         "(ingest group); detector: "
                         f"{ui.fmt_int(by_group.get(k.detect_group, 0))}")

    services = sorted(set(traffic["service"]))
    # The current bucket is still filling: charting it would show a false drop at the right edge.
    complete = traffic[traffic["time"] < pd.Timestamp((now // bucket) * bucket, unit="s", tz="UTC")]
    left, right = st.columns(2)
    with left:
        st.subheader("Messages / s by service")
        if traffic.empty:
            st.info("No messages in this window.")
        else:
            st.altair_chart(charts.rate_by_service(complete, "messages_per_s", "messages / s", services, tfmt),
                            width="stretch")
    with right:
        st.subheader("Recipients / s by service")
        if traffic.empty:
            st.info("No messages in this window.")
        else:
            st.altair_chart(charts.rate_by_service(complete, "recipients_per_s", "recipients / s", services, tfmt),
                            width="stretch")

    st.subheader("Open incidents")
    if open_inc.empty:
        st.success("No open incidents.", icon=":material/check_circle:")
    else:
        ui.incident_table(open_inc, key="live_incidents",
                          acknowledged=queries.acknowledged(ctx.db, open_inc["incident_id"]),
                          stored=queries.exposure_counts(ctx.db, open_inc["incident_id"]),
                          columns=["severity", "status", "kind", "service", "campaign", "copies", "exposed",
                                   "last seen", "summary"])

    st.subheader("Services")
    if totals.empty:
        st.info("No traffic in this window.")
    else:
        st.dataframe(
            totals, hide_index=True, width="stretch",
            column_order=["service", "messages", "recipients", "recipients_per_message", "last_event"],
            column_config={
                "messages": st.column_config.NumberColumn("messages", format="localized"),
                "recipients": st.column_config.NumberColumn("recipients", format="localized"),
                "recipients_per_message": st.column_config.NumberColumn("recipients / message", format="%.2f"),
                "last_event": st.column_config.DatetimeColumn("last message", format="YYYY-MM-DD HH:mm:ss",
                                                              timezone="UTC"),
            })
    if not errors["by_reason"].empty:
        with st.expander(f"Malformed input in the last 24 h: {ui.fmt_int(errors['recent'])}"):
            st.dataframe(errors["by_reason"], hide_index=True, width="stretch")
    st.caption(f"Updated {ui.fmt_time(pd.Timestamp(now, unit='s', tz='UTC'), seconds=True)}")


live()
