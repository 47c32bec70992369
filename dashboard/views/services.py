"""Services: what normal looks like per service (volume, recipients per message, daily rhythm) and
the detectors' thresholds that apply to it."""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from mailaudit.dashboard import aggregates, charts, queries, stats, ui

ctx = ui.context()
ui.page_header("Services", "Baselines from the per-minute aggregate and the detection thresholds in force · UTC")

if not aggregates.exists(ctx.db):
    st.warning("The per-minute aggregate is missing: run `mailaudit migrate` (or start `mailaudit dashboard`, "
               "which creates it).", icon=":material/build:")
    st.stop()

PERIODS = {"Last 24 hours": 86400, "Last 7 days": 7 * 86400, "Last 30 days": 30 * 86400}
period = st.segmented_control("Period", list(PERIODS), default="Last 7 days", key="svc_period",
                              label_visibility="collapsed") or "Last 7 days"
now = ui.now_s()
until = (now // 60 + 1) * 60
since = until - PERIODS[period]
minutes = ui.cached(ctx, queries.service_minutes, since, until)
dist = ui.cached(ctx, queries.recipients_distribution, since, until)
profile = ui.cached(ctx, queries.hour_profile, since, until)
base = stats.service_baselines(minutes, dist, now)
if base.empty:
    st.info("No traffic in this period.")
    st.stop()

st.subheader("Baselines")
st.dataframe(
    base, hide_index=True, width="stretch",
    column_order=["service", "messages", "recipients", "per_min_median", "per_min_p99", "per_min_max", "rcpt_p50",
                  "rcpt_p99", "rcpt_max", "leaking"],
    column_config={
        "messages": st.column_config.NumberColumn("messages", format="localized"),
        "recipients": st.column_config.NumberColumn("recipients", format="localized"),
        "per_min_median": st.column_config.NumberColumn("msgs/min median", format="%.1f",
                                                        help="quiet minutes count as 0"),
        "per_min_p95": st.column_config.NumberColumn("msgs/min p95", format="%.1f"),
        "per_min_p99": st.column_config.NumberColumn("msgs/min p99", format="%.1f"),
        "per_min_max": st.column_config.NumberColumn("msgs/min max", format="%.0f"),
        "rcpt_p50": st.column_config.NumberColumn("rcpt/msg p50", format="%.0f"),
        "rcpt_p99": st.column_config.NumberColumn("rcpt/msg p99", format="%.0f"),
        "rcpt_max": st.column_config.NumberColumn("rcpt/msg max", format="%.0f"),
        "leaking": st.column_config.NumberColumn("with strangers", format="localized",
                                                 help="copies showing addresses that were not their recipients: "
                                                      "normal for threads sent one copy per recipient, "
                                                      "a leak otherwise"),
        "last_active": st.column_config.DatetimeColumn("last active", format="YYYY-MM-DD HH:mm", timezone="UTC"),
    })

names = list(base["service"])
# ?service=NAME links straight to one service; otherwise the busiest one is shown first.
wanted = st.query_params.get("service")
default = names.index(wanted) if wanted in names else int(base["messages"].idxmax())
service = st.selectbox("Service", names, index=default, key="svc_service")
row = base[base["service"] == service].iloc[0]
color = charts.PALETTE[sorted(names).index(service) % len(charts.PALETTE)]
m = st.columns(6)
m[0].metric("Messages", ui.fmt_int(row["messages"]), border=True)
m[1].metric("Msgs/min median", ui.fmt_rate(row["per_min_median"]), border=True)
m[2].metric("Msgs/min p99", ui.fmt_rate(row["per_min_p99"]), border=True)
m[3].metric("Msgs/min max", ui.fmt_rate(row["per_min_max"]), border=True)
m[4].metric("Rcpt/msg p50", ui.fmt_rate(row["rcpt_p50"]), border=True)
m[5].metric("Rcpt/msg p99", ui.fmt_rate(row["rcpt_p99"]), border=True)

series = minutes[(minutes["service"] == service)
                 & (minutes["time"] < pd.Timestamp(now // 60 * 60, unit="s", tz="UTC"))][["time", "messages"]]
st.subheader("Messages per minute")
st.altair_chart(charts.per_minute(series, color), width="stretch")
left, right = st.columns(2)
with left:
    st.subheader("Hour of day")
    st.altair_chart(charts.hour_of_day(stats.hourly_average(profile, service), color), width="stretch")
with right:
    st.subheader("Recipients per message")
    st.altair_chart(charts.recipients_histogram(dist[dist["service"] == service], color), width="stretch")

st.subheader("Detection thresholds")
overrides = ctx.cfg.detect.services.get(service, {})


def _rules(section: str, rules) -> pd.DataFrame:
    own = overrides.get(section, {}) or {}
    return pd.DataFrame([{"setting": f.name, "value": str(getattr(rules, f.name)),
                          "source": "service override" if f.name in own else "default"}
                         for f in dataclasses.fields(rules)])


left, right = st.columns(2)
with left:
    st.caption("Disclosure rules (per copy)")
    st.dataframe(_rules("disclosure", ctx.cfg.detect.disclosure_for(service)), hide_index=True, width="stretch")
with right:
    st.caption("Spike rules (per bucket of event time)")
    st.dataframe(_rules("spikes", ctx.cfg.detect.spikes_for(service)), hide_index=True, width="stretch")
d = ctx.cfg.detect
st.caption(ui.esc(f"Lateness accepted {d.lateness_s:g} s · updates at most every {d.update_interval_s:g} s · "
                  f"incidents resolve after {d.resolve_after_s:g} s quiet · containment: {d.containment}"))
