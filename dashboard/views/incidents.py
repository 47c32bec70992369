"""Incidents: the list with filters, and one incident's page (``?incident=<id>``) with its timeline,
evidence, masked headers, exposure table and the operator's actions."""

from __future__ import annotations

import uuid

import pandas as pd
import streamlit as st

from mailaudit.dashboard import charts, queries, ui
from mailaudit.ingest.privacy import redact_text

ctx = ui.context()


def _valid_id(value: str | None) -> str | None:
    try:
        return str(uuid.UUID(str(value))) if value else None
    except ValueError:
        return None


# --- list -------------------------------------------------------------------------------------------------

def incident_list() -> None:
    ui.page_header("Incidents", "One row per cause: all alerts of one campaign's leak or one spike share an incident")
    now = ui.now_s()
    services = ui.cached(ctx, queries.known_services, now - 30 * 86400)
    c = st.columns([1.7, 1.3, 1.6, 1.5, 1.2])
    status = c[0].segmented_control("Status", ["Active", "Resolved", "All"], default="All", key="inc_status") or "All"
    severities = c[1].multiselect("Severity", list(queries.SEVERITY_ORDER), key="inc_sev", placeholder="any")
    chosen = c[2].multiselect("Service", services, key="inc_svc", placeholder="any")
    categories = c[3].multiselect("Category", list(queries.CATEGORIES), key="inc_cat", placeholder="any")
    period = c[4].selectbox("Period", ["Last 24 hours", "Last 7 days", "Last 30 days", "All time"], index=2,
                            key="inc_period")
    statuses = {"Active": queries.ACTIVE_STATUSES, "Resolved": ("resolved",), "All": ()}[status]
    df = queries.incidents(ctx.db, since_s=ui.period_since(period, now), statuses=statuses, severities=severities,
                           services=chosen, categories=categories)
    if df.empty:
        st.info("No incident matches these filters.")
        return
    st.caption(f"{ui.fmt_int(len(df))} incidents · most severe and most recent first · select a row to open it")
    ui.incident_table(df, key="incident_list", acknowledged=queries.acknowledged(ctx.db, df["incident_id"]),
                      stored=queries.exposure_counts(ctx.db, df["incident_id"]))


# --- one incident --------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _hold_guard(bootstrap: str, topic: str, _kcfg):
    """One follower of mail.control per dashboard process: the hold state everyone sees."""
    from mailaudit.ingest.publisher import HoldGuard

    return HoldGuard(_kcfg, topic, connect_timeout_ms=1500)


def _scope(inc: dict) -> str | None:
    # Same scope as the containment policy: the campaign, else the template, else the whole service.
    return inc["campaign"] or inc["template"] or None


def _record(actor: str, action: str, target: str, detail: dict) -> bool:
    """Append to the audit log; on failure (e.g. a read-only ClickHouse user) say so and return False."""
    try:
        queries.record_action(ctx.db, actor, action, target, detail)
        return True
    except ui.STORE_ERRORS as e:
        done = st.session_state.pop("incident_flash", None)
        st.error(ui.esc(f"{done + ' But it' if done else 'It'} could not be recorded in the audit log: "
                        f"{str(e).splitlines()[0][:200]}"))
        return False


def actions_panel(inc: dict, incident_id: str) -> None:
    service, scope = inc["service"], _scope(inc)
    target = queries.hold_target(service, scope)
    scope_label = f"{service} / {scope}" if scope else f"{service} (all campaigns)"
    guard = _hold_guard(ctx.cfg.kafka.bootstrap, ctx.cfg.kafka.topic_control, ctx.cfg.kafka)
    guard.wait_ready(1.5)
    with st.container(border=True):
        st.markdown("**Response**")
        if not guard.ready:
            st.caption("Hold state unknown: mail.control is not reachable from the dashboard.")
        else:
            hold = guard.is_held(service, scope)
            if hold is not None:
                by = f" by {hold.by}" if hold.by else ""
                st.warning(ui.esc(f"Held since {ui.fmt_time(pd.Timestamp(hold.at_ms, unit='ms', tz='UTC'))}{by}: "
                                  f"{hold.reason or 'no reason given'}"), icon=":material/pause_circle:")
            else:
                st.caption(ui.esc(f"{scope_label}: sending normally (no hold in force)"))
        flash = st.session_state.pop("incident_flash", None)
        if flash:
            st.success(ui.esc(flash), icon=":material/check:")
        if not ctx.can_act:
            st.caption("Acknowledge, hold and release need the operator role.")
        reason = st.text_input("Note / reason", key="action_reason", disabled=not ctx.can_act,
                               placeholder="what you saw, what you did (goes to the audit log)")
        b = st.columns(3)
        # Free text an operator typed goes to the keep-forever audit_log and to mail.control: addresses
        # in it are masked first (issue 14, finding 8).
        reason = redact_text(reason or "")
        if b[0].button("Acknowledge", key="ack", icon=":material/done_all:", disabled=not ctx.can_act,
                       width="stretch"):
            if ui.require_operator() and _record(ctx.actor, "acknowledge", incident_id, {"note": reason}):
                st.session_state["incident_flash"] = "Incident acknowledged."
                st.rerun()
        for col, action, icon in ((b[1], "hold", ":material/pause_circle:"),
                                  (b[2], "release", ":material/play_circle:")):
            label = f"{action.capitalize()} {'campaign' if scope else 'service'}"
            if col.button(label, key=action, icon=icon, disabled=not ctx.can_act, width="stretch",
                          type="primary" if action == "hold" else "secondary", help=ui.esc(f"{action} {scope_label}")):
                if not ui.require_operator():      # disabled= is a hint; the handler decides (finding 5)
                    return
                from mailaudit.ingest.publisher import send_control

                try:
                    send_control(ctx.cfg.kafka, action, service, scope, reason or inc["summary"], by=ctx.actor,
                                 timeout_s=5.0, incident_id=incident_id)
                except Exception as e:  # noqa: BLE001 - shown to the operator, nothing recorded
                    st.error(ui.esc(f"{action} not sent: {e}"))
                else:
                    st.session_state["incident_flash"] = f"{action.capitalize()} sent for {scope_label}."
                    if _record(ctx.actor, action, target, {"reason": reason, "incident_id": incident_id}):
                        st.rerun()


def _bucket(span_s: int) -> tuple[int, str]:
    if span_s <= 6 * 3600:
        return 60, "%H:%M"
    if span_s <= 3 * 86400:
        return 900, "%d %H:%M"
    return 3600, "%m-%d %H:%M"


def _csv(db_cfg, incident_id: str):
    """Deferred CSV (built when clicked, on its own connection): the full exposure report."""
    def build() -> bytes:
        from mailaudit.ingest.clickhouse import Database

        db = Database(db_cfg)
        try:
            return queries.exposure_csv(db, incident_id)
        finally:
            db.disconnect()
    return build


def incident_page(incident_id: str) -> None:
    if st.button("All incidents", icon=":material/arrow_back:", type="tertiary"):
        st.query_params.clear()
        st.rerun()
    inc = queries.incident(ctx.db, incident_id)
    if inc is None:
        st.error("No incident with this id.")
        return
    scope = _scope(inc)
    st.title(ui.esc(ui.kind_label(inc["kind"])))
    st.caption(ui.esc(f"{inc['service']}" + (f" / {scope}" if scope else "") + f" · {inc['category']} · "
                      f"incident {incident_id}"))
    acks = queries.acknowledged(ctx.db, [incident_id])
    badges = st.columns([1, 1, 6])
    with badges[0]:
        ui.severity_badge(inc["severity"])
    with badges[1]:
        st.badge(ui.STATUS_LABEL.get(inc["status"], inc["status"]).upper(),
                 color="gray" if inc["status"] == "resolved" else "violet")
    if incident_id in acks:
        a = acks[incident_id]
        badges[2].badge(ui.esc(f"acknowledged {ui.fmt_time(a['at'])} by {a['actor']}"), color="green",
                        icon=":material/done_all:")
    st.markdown(ui.esc(inc["summary"]))

    summary = queries.exposure_summary(ctx.db, incident_id)
    table = ui.cached(ctx, queries.exposure_table, incident_id)
    # The incident row is as of its latest alert (updates are rate-limited); stored copies may be newer.
    first_s, last_s = int(inc["first_seen"].timestamp()), int(inc["last_seen"].timestamp())
    if not table.empty:
        first_s = min(first_s, int(table["first_seen"].min().timestamp()))
        last_s = max(last_s, int(table["last_seen"].max().timestamp()))
    m = st.columns(5)
    copies, exposed = max(summary["copies"], int(inc["copies"])), max(len(table), int(inc["exposed"]))
    # ui.fmt_card: a card never cuts a number (exact figure in the help).
    m[0].metric("Leaking copies" if inc["category"] == "disclosure" else "Messages", ui.fmt_card(copies),
                border=True, help=ui.fmt_int(copies))
    m[1].metric("Exposed addresses", ui.fmt_card(exposed), border=True,
                help=f"{ui.fmt_int(exposed)} distinct addresses shown to people they were not sent to")
    m[2].metric("Seen by", ui.fmt_card(summary["recipients"]), border=True,
                help=f"{ui.fmt_int(summary['recipients'])} distinct envelope recipients of the leaking copies")
    first_ts, last_ts = pd.Timestamp(first_s, unit="s", tz="UTC"), pd.Timestamp(last_s, unit="s", tz="UTC")
    m[3].metric("First seen", ui.fmt_clock(first_ts), border=True, help=ui.fmt_time(first_ts))
    m[4].metric("Duration", ui.fmt_duration_card(last_s - first_s), border=True,
                help=f"{ui.fmt_duration(last_s - first_s)}, last seen {ui.fmt_time(last_ts)}")

    actions_panel(inc, incident_id)

    tabs = st.tabs(["Timeline", f"Exposure ({ui.fmt_int(len(table))})", "Headers", "Evidence", "Activity"])
    with tabs[0]:
        span = max(60, last_s - first_s)
        pad = max(1800, span // 4)
        bucket, tfmt = _bucket(span + 2 * pad)
        since, until = first_s - pad, min(last_s + pad, max(ui.now_s() + 60, last_s + 60))
        domain = (pd.Timestamp(since, unit="s", tz="UTC"), pd.Timestamp(until, unit="s", tz="UTC"))
        traffic = queries.scope_traffic(ctx.db, inc["service"], inc["campaign"] or None, since, until, bucket)
        left, right = st.columns(2)
        with left:
            st.subheader("Copies sent")
            st.caption(ui.esc(f"{inc['service']}" + (f" / {inc['campaign']}" if inc["campaign"] else "")
                              + f", per {bucket // 60} min, leaking copies in red"))
            if traffic.empty:
                st.info("No stored copies around the incident.")
            else:
                st.altair_chart(charts.leak_timeline(traffic, tfmt, domain), width="stretch")
        with right:
            st.subheader("Addresses exposed")
            st.caption("Distinct addresses shown to non-recipients, cumulative")
            if table.empty:
                st.info("No exposure recorded for this incident (spikes expose no address).")
            else:
                st.altair_chart(charts.exposure_growth(table["first_seen"], bucket, tfmt, domain), width="stretch")
    with tabs[1]:
        if table.empty:
            st.info("No address was exposed.")
        else:
            top = st.columns([4, 1])
            shown = table.head(1000)
            top[0].caption(f"{ui.fmt_int(len(table))} exposed addresses, most widely seen first"
                           + (" · first 1,000 shown, the CSV has all" if len(table) > 1000 else "")
                           + " · seen by = distinct recipients (other than the address) of copies that showed it")
            top[1].download_button("Download CSV", _csv(ctx.cfg.clickhouse, incident_id),
                                   file_name=f"exposure-{incident_id}.csv", mime="text/csv",
                                   icon=":material/download:", width="stretch", on_click="ignore")
            st.dataframe(
                shown.assign(ref=shown["address_hash"].str[:12]), hide_index=True,
                column_order=["exposed", "domain", "copies", "seen_by", "first_seen", "last_seen", "ref"],
                column_config={
                    "exposed": st.column_config.TextColumn("exposed address (masked)"),
                    "copies": st.column_config.NumberColumn("copies", format="localized"),
                    "seen_by": st.column_config.NumberColumn("seen by", format="localized"),
                    "first_seen": st.column_config.DatetimeColumn("first seen", format="YYYY-MM-DD HH:mm:ss",
                                                                  timezone="UTC"),
                    "last_seen": st.column_config.DatetimeColumn("last seen", format="YYYY-MM-DD HH:mm:ss",
                                                                 timezone="UTC"),
                    "ref": st.column_config.TextColumn("hash ref", help="start of the keyed address hash"),
                })
    with tabs[2]:
        sample = queries.incident_headers(ctx.db, incident_id, inc["service"], first_s - 60, last_s + 60)
        if sample.empty:
            st.info("No leaking copy stored for this incident.")
        else:
            st.caption("Visible headers of leaking copies as stored: every address masked")
            for r in sample.to_dict("records"):
                lines = [f"Date:       {ui.fmt_time(r['sent_at'], seconds=True)}", f"Message-ID: {r['message_id']}",
                         f"From:       {r['from']}", f"To:         {r['to'] or '(empty)'}  [{r['to_count']}]"]
                if r["cc"]:
                    lines.append(f"Cc:         {r['cc']}  [{r['cc_count']}]")
                if r["bcc"]:
                    lines.append(f"Bcc:        {r['bcc']}")
                lines.append(f"-- envelope recipients {r['recipients']} · shown to strangers {r['strangers']}"
                             + (f" · {r['flags']}" if r["flags"] else ""))
                st.code("\n".join(lines), language=None)
    with tabs[3]:
        alerts = queries.incident_alerts(ctx.db, incident_id, inc["service"])
        if alerts.empty:
            st.info("No alert stored for this incident.")
        else:
            left, right = st.columns([1, 1])
            with left:
                st.caption(ui.esc(f"Evidence of the latest alert ({alerts.iloc[0]['status']}, "
                                  f"{ui.fmt_time(alerts.iloc[0]['detected_at'])})"))
                st.json(alerts.iloc[0]["evidence"], expanded=True)
            with right:
                st.caption(f"{ui.fmt_int(len(alerts))} alerts")
                st.dataframe(alerts.drop(columns=["evidence"]), hide_index=True,
                             column_config={"detected_at": st.column_config.DatetimeColumn(
                                 "detected", format="YYYY-MM-DD HH:mm:ss", timezone="UTC")})
    with tabs[4]:
        log = queries.actions(ctx.db, [incident_id, queries.hold_target(inc["service"], scope)])
        if log.empty:
            st.info("No operator action yet.")
        else:
            st.dataframe(log.assign(detail=log["detail"].map(lambda d: ", ".join(f"{k}: {v}" for k, v in d.items()))),
                         hide_index=True, width="stretch",
                         column_config={"at": st.column_config.DatetimeColumn("at", format="YYYY-MM-DD HH:mm:ss",
                                                                              timezone="UTC")})


selected = _valid_id(st.query_params.get("incident"))
if selected:
    incident_page(selected)
else:
    incident_list()
