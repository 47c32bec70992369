"""Each dashboard page in Streamlit's AppTest, on the real 18.16 server and broker, against the seed.

The app is run from its entry point exactly as ``streamlit run`` would, with its config handed over
through ``MAILAUDIT_CONFIG``; assertions read the rendered elements (metric values, table cells,
code blocks), the control topic and the audit log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from kafka import TopicPartition
from streamlit.testing.v1 import AppTest

from dashboard_seed import LEAK_CAMPAIGN, billing_event, insert_duplicate, seed
from helpers import write_config
from mailaudit.dashboard import aggregates, auth, ui
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer
from mailaudit.ingest.privacy import normalise_address
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics

pytestmark = pytest.mark.servers

APP = str(Path(ui.__file__).resolve().parent / "app.py")


def _use(cfg, tmp_path, monkeypatch) -> None:
    for k in list(os.environ):
        if k.startswith("MAILAUDIT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("MAILAUDIT_CONFIG", str(write_config(cfg, tmp_path / f"dash-{time.monotonic_ns()}.toml")))


OPERATOR_HASH = auth.hash_password("operator-pass-0", iterations=100_000)
AS_OPERATOR = {ui._ROLE: auth.OPERATOR}     # a signed-in operator (anonymous sessions are readers)


@pytest.fixture
def env(make_cfg, tmp_path, monkeypatch):
    # AppTest runs no server: bind where `mailaudit dashboard` would, since the app checks the real
    # bind address (Streamlit's server.address), not only dashboard.host.
    from streamlit import config as st_config
    st_config.set_option("server.address", "127.0.0.1")

    def build(**dashboard):
        cfg = make_cfg()
        for k, v in dashboard.items():
            setattr(cfg.dashboard, k, v)
        db = Database(cfg.clickhouse)
        migrate(db)
        aggregates.ensure(db)
        create_topics(cfg.kafka)
        s = seed(db, cfg)
        _use(cfg, tmp_path, monkeypatch)
        return cfg, db, s
    yield build
    st_config.set_option("server.address", None)


def run_app(page: str | None = None, session: dict | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (session or {}).items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(page)
        at.query_params.update(query)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame_with(at: AppTest, column: str):
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert frames, f"no table with a {column!r} column"
    return frames[0]


# --- Live ------------------------------------------------------------------------------------------

def test_live_shows_the_seeded_traffic_once_per_event(env):
    cfg, db, s = env()
    insert_duplicate(db, cfg, billing_event(s, 5))            # a redelivery must not count twice
    at = run_app()
    m = metrics(at)
    assert m["Messages"] == f"{sum(s.messages_last_hour.values()):,}"         # 173
    assert m["Recipients"] == f"{sum(s.recipients_last_hour.values()):,}"     # 193
    assert m["Open incidents"] == "1"
    assert m["DLQ · 24 h"] == "4"
    assert m["Consumer lag"] == "0"                           # Kafka reachable, nothing behind
    services = frame_with(at, "recipients_per_message").set_index("service")
    assert services["messages"].to_dict() == s.messages_last_hour
    assert services.loc["support", "recipients_per_message"] == 3
    incidents = frame_with(at, "exposed")
    assert len(incidents) == 1
    row = incidents.iloc[0]
    assert (row["severity"], row["service"], row["campaign"], row["copies"], row["exposed"]) == \
        ("critical", "newsletter", LEAK_CAMPAIGN, 3, 12)
    assert len(at.get("vega_lite_chart")) == 2


def test_live_last_day_window_and_unreachable_kafka(env, tmp_path, monkeypatch):
    cfg, db, s = env()
    cfg.kafka.bootstrap = "127.0.0.1:1"                        # nothing listens there
    _use(cfg, tmp_path, monkeypatch)
    at = run_app()
    at.segmented_control(key="live_window").set_value("Last 24 hours").run()
    m = metrics(at)
    assert m["Messages"] == f"{sum(s.messages_last_day.values()):,}"          # 203 with billing's older 30
    assert m["Consumer lag"] == "–"


# --- Incidents -----------------------------------------------------------------------------------------

def test_incident_list_and_filters(env):
    cfg, db, s = env()
    at = run_app("views/incidents.py")
    table = frame_with(at, "summary")
    assert list(table["kind"]) == ["Concatenated To: header", "Volume spike"]
    assert list(table["status"]) == ["open", "resolved"]
    at.segmented_control(key="inc_status").set_value("Resolved").run()
    assert list(frame_with(at, "summary")["service"]) == ["receipts"]
    at.segmented_control(key="inc_status").set_value("All").run()
    at.selectbox(key="inc_period").set_value("Last 24 hours").run()
    assert list(frame_with(at, "summary")["service"]) == ["newsletter"]
    at.multiselect(key="inc_sev").set_value(["warning"]).run()
    assert any("No incident matches" in i.value for i in at.info)


def test_incident_page_shows_exposure_evidence_and_masked_headers(env):
    cfg, db, s = env()
    at = run_app("views/incidents.py", incident=s.incident_id)
    m = metrics(at)
    assert (m["Leaking copies"], m["Exposed addresses"], m["Seen by"]) == ("3", "12", "3")
    exposure = frame_with(at, "seen_by")
    assert set(exposure["exposed"]) == s.exposed_masked
    assert dict(zip(exposure["exposed"], exposure["seen_by"])) == s.seen_by
    heads = [c.value for c in at.code]
    assert len(heads) == 3
    assert all("To:" in h and "[12]" in h and "shown to strangers 11" in h for h in heads)
    assert all("***@" in h for h in heads) and not any("alice@" in h for h in heads)
    evidence = at.json[0].value
    assert json.loads(evidence)["strangers"] == 11
    assert len(at.get("download_button")) == 1
    assert len(at.get("vega_lite_chart")) == 2


def test_unknown_incident_id_is_reported(env):
    env()
    at = run_app("views/incidents.py", incident="00000000-0000-0000-0000-000000000000")
    assert any("No incident" in e.value for e in at.error)


def _control_records(cfg) -> list[tuple[bytes, dict]]:
    c = make_consumer(cfg.kafka, None, consumer_timeout_ms=3000)
    try:
        tp = TopicPartition(cfg.kafka.topic_control, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        return [(r.key, json.loads(r.value)) for r in c]
    finally:
        c.close()


def test_operator_holds_releases_and_acknowledges(env):
    cfg, db, s = env(operator_password_hash=OPERATOR_HASH)
    at = run_app("views/incidents.py", session=AS_OPERATOR, incident=s.incident_id)
    at.text_input(key="action_reason").set_value("To: lists the whole segment").run()
    at.button(key="hold").click().run()
    assert not at.exception
    assert any("Hold sent" in x.value for x in at.success)
    records = _control_records(cfg)
    assert len(records) == 1
    key, doc = records[0]
    assert json.loads(key) == ["newsletter", LEAK_CAMPAIGN]
    assert (doc["v"], doc["action"], doc["service"], doc["campaign"]) == (1, "hold", "newsletter", LEAK_CAMPAIGN)
    assert doc["reason"] == "To: lists the whole segment" and doc["by"] == "dashboard:operator"
    assert doc["incident_id"] == s.incident_id and doc["at"].endswith("Z")

    at.button(key="release").click().run()
    assert [d["action"] for _, d in _control_records(cfg)] == ["hold", "release"]
    at.button(key="ack").click().run()
    log = db.execute("SELECT action, target, actor FROM {db}.audit_log ORDER BY action")
    assert log == [("acknowledge", s.incident_id, "dashboard:operator"),
                   ("hold", f"newsletter/{LEAK_CAMPAIGN}", "dashboard:operator"),
                   ("release", f"newsletter/{LEAK_CAMPAIGN}", "dashboard:operator")]
    at = run_app("views/incidents.py", session=AS_OPERATOR, incident=s.incident_id)
    activity = frame_with(at, "actor")
    assert sorted(activity["action"]) == ["acknowledge", "hold", "release"]
    at.switch_page("views/incidents.py")
    at.query_params.clear()
    at.run()
    assert list(frame_with(at, "summary")["status"]) == ["acknowledged", "resolved"]


# --- Login and roles --------------------------------------------------------------------------------------

def test_exposed_dashboard_without_password_refuses_to_serve(env):
    env(host="0.0.0.0")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert any("refuses to serve" in e.value for e in at.error)
    assert not at.metric and not at.dataframe


def test_login_roles_reader_sees_operator_acts(env):
    cfg, db, s = env(host="0.0.0.0", reader_password_hash=auth.hash_password("reader-pass-1", iterations=100_000),
                     operator_password_hash=auth.hash_password("operator-pass-1", iterations=100_000))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.metric                                   # nothing but the sign-in form
    at.text_input[0].set_value("wrong-password")
    at.button[0].click().run()
    assert any("Wrong password" in e.value for e in at.error) and not at.metric
    at.text_input[0].set_value("reader-pass-1")
    at.button[0].click().run()
    assert metrics(at)["Open incidents"] == "1"
    at.switch_page("views/incidents.py")
    at.query_params["incident"] = s.incident_id
    at.run()
    assert at.button(key="hold").disabled and at.button(key="ack").disabled and at.button(key="release").disabled

    op = AppTest.from_file(APP, default_timeout=60).run()
    op.text_input[0].set_value("operator-pass-1")
    op.button[0].click().run()
    op.switch_page("views/incidents.py")
    op.query_params["incident"] = s.incident_id
    op.run()
    assert not op.button(key="hold").disabled


# --- Search ----------------------------------------------------------------------------------------------

class RecordingDatabase(Database):
    """Every statement and parameter the app sends to ClickHouse, for the privacy assertion."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.sent: list[str] = []

    def execute(self, sql, params=None):
        self.sent.append(sql + " " + repr(params))
        return super().execute(sql, params)


def _search(at: AppTest, **fields) -> AppTest:
    for key, value in fields.items():
        if key == "q_service":
            at.selectbox(key=key).set_value(value)
        else:
            at.text_input(key=key).set_value(value)
    next(b for b in at.button if b.label == "Search").click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_search_by_address_sends_only_the_hash(env):
    cfg, db, s = env()
    rec = RecordingDatabase(cfg.clickhouse)
    at = run_app("views/search.py", session={ui._DB: rec})
    _search(at, q_address="  Farid@Yahoo.com ")            # s.leaked_address, typed carelessly
    assert normalise_address(s.leaked_address) == "farid@yahoo.com"
    rows = frame_with(at, "match")
    assert sorted(rows["event_id"]) == sorted(s.leak_event_ids)
    assert set(rows["match"]) == {"To"}
    assert any("not sent to" in w.value for w in at.warning)
    sent = "\n".join(rec.sent).lower()
    assert "farid" not in sent and "yahoo.com" not in sent        # neither the address nor a part of it
    assert any("hasany(env_hashes" in q for q in sent.splitlines())


def test_search_pages_through_results(env):
    cfg, db, s = env()
    at = run_app("views/search.py")
    _search(at, q_service="billing")
    assert any("150 messages" in md.value for md in at.markdown)
    assert any("Page 1 of 3" in md.value for md in at.markdown)
    first = set(frame_with(at, "event_id")["event_id"])
    next(b for b in at.button if b.label == "Next").click().run()
    assert any("Page 2 of 3" in md.value for md in at.markdown)
    second = set(frame_with(at, "event_id")["event_id"])
    assert len(first) == len(second) == 50 and not first & second
    _search(at, q_service="Any", q_address="not an address")
    assert any("full address" in e.value for e in at.error)


# --- Services ----------------------------------------------------------------------------------------------

def test_services_baselines_and_thresholds(env, tmp_path, monkeypatch):
    cfg, db, s = env()
    cfg.detect.services = {"billing": {"disclosure": {"strangers_critical": 5}}}
    _use(cfg, tmp_path, monkeypatch)
    at = run_app("views/services.py")
    base = frame_with(at, "per_min_median").set_index("service")
    assert base["messages"].to_dict() == s.messages_last_day
    assert base.loc["support", "recipients"] == 30 and base.loc["support", "rcpt_p50"] == 3
    assert base.loc["newsletter", "leaking"] == 3
    assert at.selectbox(key="svc_service").value == "billing"           # the busiest service first
    assert metrics(at)["Messages"] == "150"
    rules = [d.value for d in at.dataframe if "setting" in d.value.columns]
    disclosure = rules[0].set_index("setting")
    assert disclosure.loc["strangers_critical", "value"] == "5"
    assert disclosure.loc["strangers_critical", "source"] == "service override"
    assert disclosure.loc["strangers_min", "source"] == "default"
    at.selectbox(key="svc_service").set_value("support").run()
    assert metrics(at)["Rcpt/msg p50"] == "3.00"
    assert len(at.get("vega_lite_chart")) == 3
    linked = run_app("views/services.py", service="newsletter")          # deep link
    assert linked.selectbox(key="svc_service").value == "newsletter" and metrics(linked)["Messages"] == "43"


# --- Failure modes ---------------------------------------------------------------------------------------

def test_clickhouse_down_is_reported_not_crashed(env, tmp_path, monkeypatch):
    from mailaudit.stack import free_port

    cfg, db, s = env()
    cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{free_port()}/nowhere"     # nothing listens
    _use(cfg, tmp_path, monkeypatch)
    at = run_app()
    assert any("ClickHouse is not answering" in e.value for e in at.error)
    at.switch_page("views/search.py").run()
    assert not at.exception and any("ClickHouse is not answering" in e.value for e in at.error)


def test_dashboard_verb_serves_the_app_and_creates_the_aggregate(make_cfg, tmp_path):
    """``mailaudit dashboard`` end to end: policy check, aggregate for an older schema, exec of Streamlit."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from helpers import wait_until
    from mailaudit.stack import free_port

    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    db.execute(f"DROP TABLE {{db}}.{aggregates.VIEW}")     # as on a schema from before migration 3
    db.execute(f"DROP TABLE {{db}}.{aggregates.TABLE}")
    assert not aggregates.exists(db)
    cfg.dashboard.port = free_port()
    path = write_config(cfg, tmp_path / "dash.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")}
    log = open(tmp_path / "dashboard.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mailaudit", "--config", str(path), "dashboard"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{cfg.dashboard.port}/_stcore/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_until(healthy, timeout=60, what="the dashboard's health endpoint")
        assert aggregates.exists(db)
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg.dashboard.port}/", timeout=5) as r:
            assert b"<html" in r.read().lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
            stopped_on_sigterm = True
        except subprocess.TimeoutExpired:
            proc.kill()
            stopped_on_sigterm = False
        log.close()
    # SIGTERM reaches Streamlit itself (the verb execs it), which stops within the 20 s a service manager waits.
    assert stopped_on_sigterm
    text = (tmp_path / "dashboard.log").read_text()
    assert "created the per-minute aggregate" in text and f"dashboard on http://127.0.0.1:{cfg.dashboard.port}" in text


def test_action_that_cannot_be_recorded_says_so(env, monkeypatch):
    """A read-only ClickHouse user (18.16's dashboard reader) cannot append to the audit log: the
    hold still goes out, and the operator is told it was not recorded."""
    from clickhouse_driver.errors import ServerException

    from mailaudit.dashboard import queries

    cfg, db, s = env(operator_password_hash=OPERATOR_HASH)

    def refuse(*a, **kw):
        raise ServerException("Cannot execute query in readonly mode", code=164)
    monkeypatch.setattr(queries, "record_action", refuse)
    at = run_app("views/incidents.py", session=AS_OPERATOR, incident=s.incident_id)
    at.button(key="hold").click().run()
    assert not at.exception
    assert any("Hold sent" in e.value and "could not be recorded" in e.value for e in at.error)
    assert [d["action"] for _, d in _control_records(cfg)] == ["hold"]
    assert db.execute("SELECT count() FROM {db}.audit_log") == [(0,)]
