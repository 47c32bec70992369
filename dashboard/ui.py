"""What every page shares: the session (config, database, role), login, formatting, escaping.

The config is loaded once per browser session at the entry point (``app.py``) from
``MAILAUDIT_CONFIG`` / the environment, exactly as the CLI does, and handed to pages through
``context()``; nothing below reads the environment. Every page calls ``context()`` first, which
stops the script unless the session is signed in, so a page can never render without the login.

Escaping: data is shown through ``st.dataframe``, ``st.json``, ``st.code``, ``st.text`` and chart
specs, which render text as text. Where data must go into a Markdown string (titles, captions),
``esc()`` neutralises Markdown, Streamlit's ``:colour[...]``/``:icon:`` directives and HTML, and
``unsafe_allow_html`` is never used.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import streamlit as st
from clickhouse_driver.errors import Error as ClickHouseError

from mailaudit.config import Config, ConfigError, load_config
from mailaudit.dashboard import auth
from mailaudit.ingest.clickhouse import Database

_CFG = "_mailaudit_cfg"
_DB = "_mailaudit_db"
_ROLE = "_mailaudit_role"
_POLICY = "_mailaudit_policy"

# The wordmark in the sidebar: a shield around an envelope, then the name (static markup, no data).
LOGO_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="190" height="36" viewBox="0 0 190 36">
<path d="M16 2 L29 7 V17 C29 25.5 23.5 31.5 16 34 C8.5 31.5 3 25.5 3 17 V7 Z" fill="#1d4ed8"/>
<rect x="8.5" y="12" width="15" height="11" rx="1.5" fill="#ffffff"/>
<path d="M8.8 12.6 L16 18.2 L23.2 12.6" fill="none" stroke="#1d4ed8" stroke-width="1.6"/>
<text x="38" y="25" font-family="Inter, 'Source Sans Pro', 'Segoe UI', Helvetica, Arial, sans-serif"
 font-size="21" font-weight="700" fill="#1f2933">mail<tspan fill="#1d4ed8">audit</tspan></text>
</svg>"""

SEVERITY_BADGE = {"critical": ("red", ":material/error:"), "warning": ("orange", ":material/warning:"),
                  "info": ("blue", ":material/info:")}
STATUS_LABEL = {"open": "open", "update": "open", "resolved": "resolved"}
KIND_LABEL = {
    "concatenated_to": "Concatenated To: header",
    "run_together": "Addresses run together",
    "visible_disclosure": "Recipients disclosed (Cc/To)",
    "bcc_header": "Bcc header left in",
    "recipient_spike": "Recipient spike",
    "volume_spike": "Volume spike",
    "anomaly": "Anomaly (model)",
}


@dataclass
class Context:
    cfg: Config
    db: Database
    role: str

    @property
    def can_act(self) -> bool:
        return auth.can_act(self.role)

    @property
    def actor(self) -> str:
        return f"dashboard:{self.role}"

    @property
    def db_key(self) -> str:
        """Identifies the database in cache keys (tests run many databases in one process)."""
        p = self.cfg.clickhouse.parts()
        return f"{p['host']}:{p['port']}/{p['database']}"


# --- session ---------------------------------------------------------------------------------------

def bootstrap() -> Context | None:
    """Entry-point half of the session: config, safety policy, login. None means "not signed in"
    (the login form has been drawn and the caller must stop)."""
    if _CFG not in st.session_state:
        try:
            st.session_state[_CFG] = load_config()
        except ConfigError as e:
            st.error(f"Configuration error: {e}")
            st.stop()
    cfg: Config = st.session_state[_CFG]
    try:
        # The address Streamlit really binds, and whether this request came through a proxy (issue 14).
        policy = auth.access_policy(cfg.dashboard, server_address=st.get_option("server.address"),
                                    proxied=auth.is_proxied(_request_headers()))
    except auth.AuthConfigError as e:
        st.error(f"The dashboard refuses to serve: {e}")
        st.stop()
    st.session_state[_POLICY] = policy
    if _ROLE not in st.session_state and not policy.login_required:
        st.session_state[_ROLE] = policy.anonymous_role
    if _ROLE not in st.session_state:
        return None
    return context()


def _request_headers() -> dict:
    try:
        return dict(st.context.headers)
    except Exception:  # noqa: BLE001 - no request (bare mode): no proxy headers
        return {}


def require_operator() -> bool:
    """Re-check the session's role inside an action handler (never trust ``disabled=`` alone); say
    why and return False when it may not act."""
    try:
        auth.require_operator(st.session_state.get(_ROLE))
        return True
    except auth.NotAuthorized as e:
        st.error(str(e))
        return False


def context() -> Context:
    """The signed-in session's context; stops the page script when there is none."""
    role = st.session_state.get(_ROLE)
    cfg = st.session_state.get(_CFG)
    if not role or cfg is None:
        st.warning("Please sign in.")
        st.stop()
    db = st.session_state.get(_DB)
    if db is None:
        db = st.session_state[_DB] = Database(cfg.clickhouse)
    return Context(cfg, db, role)


# What a page may raise when ClickHouse is down or unreachable (the page reports it, the app stays up).
STORE_ERRORS = (ClickHouseError, OSError, EOFError)


def store_unavailable(error: BaseException) -> None:
    """Say that the data store is not answering, and drop the connection so the next run reconnects."""
    db = st.session_state.pop(_DB, None)
    if isinstance(db, Database):
        db.disconnect()
    detail = str(error).splitlines()[0][:200] if str(error) else "no detail"
    st.error(esc(f"ClickHouse is not answering ({type(error).__name__}: {detail}). "
                 "This page works again as soon as it is back; reload to retry."), icon=":material/cloud_off:")


def login_form() -> None:
    """The sign-in page (the only page an anonymous session can reach when a login is required)."""
    cfg: Config = st.session_state[_CFG]
    _, mid, _ = st.columns([1, 1.2, 1])
    with mid:
        st.title("mailaudit")
        st.caption("Outbound-mail audit and disclosure detection")
        with st.form("login", border=True):
            password = st.text_input("Password", type="password")
            submitted = st.form_submit_button("Sign in", type="primary", width="stretch")
        if submitted:
            time.sleep(auth.THROTTLE.delay())   # process-wide: a new session does not reset it
            role = auth.login(cfg.dashboard, password)
            if role:
                st.session_state[_ROLE] = role
                st.rerun()
            auth.THROTTLE.failed()
            time.sleep(1.0)   # slows password guessing; the session is single-threaded anyway
            st.error("Wrong password.")


def sign_out() -> None:
    for key in (_ROLE, _DB):
        obj = st.session_state.pop(key, None)
        if isinstance(obj, Database):
            obj.disconnect()


def login_required() -> bool:
    policy = st.session_state.get(_POLICY)
    return bool(policy and policy.login_required)


# --- caching -----------------------------------------------------------------------------------------

@st.cache_data(ttl=30, show_spinner=False, max_entries=256)
def _cached_call(db_key: str, fn_name: str, args: tuple, kwargs: tuple, _fn: Callable, _db: Database) -> Any:
    return _fn(_db, *args, **dict(kwargs))


def cached(ctx: Context, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call a ``queries`` function through a 30 s cache keyed by database, function and arguments:
    paging through search results or an exposure table must not re-run the scan."""
    return _cached_call(ctx.db_key, fn.__qualname__, args, tuple(sorted(kwargs.items())), fn, ctx.db)


# --- formatting ----------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~:$<&])")


def esc(text: Any) -> str:
    """Make any value safe inside a Markdown string: every Markdown/directive character is escaped."""
    s = "" if text is None else str(text)
    s = s.replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", s)


def fmt_int(n: Any) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return "–"


def fmt_rate(x: float) -> str:
    if x is None or pd.isna(x):
        return "–"
    if x >= 10_000:
        return fmt_card(x)
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_time(ts: Any, seconds: bool = False) -> str:
    if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
        return "–"
    t = pd.Timestamp(ts)
    if t.tzinfo is None:
        t = t.tz_localize("UTC")
    return t.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def fmt_clock(ts: Any) -> str:
    """Time of day (UTC, hours and minutes) for metric cards, where a full date does not fit (``14:07:33``
    is cut at 1280 px); the full time goes in the help."""
    if ts is None or pd.isna(ts):
        return "–"
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%H:%M")


def fmt_duration_card(seconds: float) -> str:
    """A duration short enough for a metric card (``23 h 59 min`` is not); fmt_duration for the help."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d" if seconds >= 100 * 86400 else f"{seconds / 86400:.1f} d"


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def kind_label(kind: str) -> str:
    return KIND_LABEL.get(kind, kind)


def severity_badge(severity: str) -> None:
    color, icon = SEVERITY_BADGE.get(severity, ("gray", None))
    st.badge(esc(severity.upper()), color=color, icon=icon)


def now_s() -> int:
    return int(time.time())


PERIODS = {"Last hour": 3600, "Last 24 hours": 86400, "Last 7 days": 7 * 86400, "Last 30 days": 30 * 86400,
           "All time": None}


def period_since(label: str, now: int) -> int:
    span = PERIODS.get(label)
    return 0 if span is None else now - span


def utc_from_date(d: dt.date, end: bool = False) -> int:
    t = dt.datetime.combine(d, dt.time.max if end else dt.time.min, tzinfo=dt.timezone.utc)
    return int(t.timestamp()) + (1 if end else 0)


def page_header(title: str, caption: str | None = None) -> None:
    st.title(title)
    if caption:
        st.caption(caption)


def sidebar(ctx: Context) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{esc(ctx.role)}**" if login_required() else f"Local session · **{esc(ctx.role)}**")
        if login_required() and st.button("Sign out", icon=":material/logout:", width="stretch"):
            sign_out()
            st.rerun()
        st.divider()
        st.caption(f"ClickHouse database {esc(ctx.db.name)}  \nKafka {esc(ctx.cfg.kafka.bootstrap)}  \n"
                   "All times UTC · addresses masked")



# --- shared widgets ----------------------------------------------------------------------------------------

INCIDENT_PAGE = "views/incidents.py"


INCIDENT_COLUMNS = ["severity", "status", "kind", "service", "campaign", "copies", "exposed", "last seen", "summary"]


def incident_table(df: pd.DataFrame, key: str, acknowledged: dict[str, Any] | None = None,
                   stored: dict[str, dict[str, int]] | None = None, height: int | str = "auto",
                   columns: list[str] | None = None) -> None:
    """Incidents as a selectable table; selecting a row opens the incident page. ``stored`` holds
    the exposures table's counts (``queries.exposure_counts``), fresher than the incident row's."""
    acknowledged = acknowledged or {}
    stored = stored or {}
    copies = [max(int(c), stored.get(i, {}).get("copies", 0)) for i, c in zip(df["incident_id"], df["copies"])]
    exposed = [max(int(e), stored.get(i, {}).get("exposed", 0)) for i, e in zip(df["incident_id"], df["exposed"])]
    view = pd.DataFrame({
        "severity": df["severity"],
        # open -> acknowledged (an operator has it) -> resolved, as on-call tools show it
        "status": ["acknowledged" if st_ != "resolved" and i in acknowledged else STATUS_LABEL.get(st_, st_)
                   for st_, i in zip(df["status"], df["incident_id"])],
        "kind": df["kind"].map(kind_label),
        "service": df["service"],
        "campaign": [c or t for c, t in zip(df["campaign"], df["template"])],
        "copies": copies,
        "exposed": exposed,
        "first seen": df["first_seen"],
        "last seen": df["last_seen"],
        "summary": df["summary"],
    })
    event = st.dataframe(
        view, key=key, hide_index=True, on_select="rerun", selection_mode="single-row", height=height,
        column_order=columns or INCIDENT_COLUMNS,
        column_config={
            "severity": st.column_config.TextColumn("severity", width=80),
            "status": st.column_config.TextColumn("status", width=100),
            "kind": st.column_config.TextColumn("kind", width=190),
            "campaign": st.column_config.TextColumn("campaign / template"),
            "copies": st.column_config.NumberColumn("copies", format="localized", width=70,
                                                    help="leaking copies / messages"),
            "exposed": st.column_config.NumberColumn("exposed", format="localized", width=75,
                                                     help="distinct addresses shown to non-recipients"),
            "first seen": st.column_config.DatetimeColumn("first seen", format="YYYY-MM-DD HH:mm", timezone="UTC"),
            "last seen": st.column_config.DatetimeColumn("last seen", format="YYYY-MM-DD HH:mm", timezone="UTC"),
            "summary": st.column_config.TextColumn("summary", width="large"),
        },
    )
    rows = getattr(getattr(event, "selection", None), "rows", None) if event is not None else None
    if rows:
        st.switch_page(INCIDENT_PAGE, query_params={"incident": df.iloc[rows[0]]["incident_id"]})


def fmt_card(n: Any) -> str:
    """A count for a metric card: exact up to 9,999; above, three significant figures with k / M / B,
    so six cards in a row never cut a number at 1280 px (measured in tests/test_dashboard_browser.py:
    six characters such as ``88,888`` are cut there); the exact figure goes in the card's help."""
    try:
        n = int(n)
    except (TypeError, ValueError):
        return "–"
    if abs(n) < 10_000:
        return f"{n:,}"
    units = ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T"))
    for i, (div, unit) in enumerate(units):
        v = n / div
        text = f"{v:.0f}" if abs(v) >= 99.95 else f"{v:.1f}" if abs(v) >= 9.995 else f"{v:.2f}"
        if abs(float(text)) < 1000 or i == len(units) - 1:
            return text + unit
    return f"{n:,}"  # not reached
