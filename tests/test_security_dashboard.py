"""Issue 14, findings 2, 5, 6, 8: who may see and act on the dashboard.

- the login decision follows the address Streamlit really binds (``server.address``), not only
  ``dashboard.host``; a request through a reverse proxy is remote;
- an anonymous session is a reader, never an operator;
- every action handler re-checks the role (``disabled=`` is only a display hint);
- an operator's note is redacted before it reaches mail.control and the audit log."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from mailaudit.config import DashboardConfig
from mailaudit.dashboard import auth, ui

from test_dashboard_pages import APP, OPERATOR_HASH, _control_records, env, run_app  # noqa: F401 - fixture

PW = auth.hash_password("operator-pass-0", iterations=100_000)


@pytest.mark.parametrize("server_address", [None, "", "0.0.0.0", "::", "10.1.2.3"])
def test_a_server_bound_beyond_loopback_needs_a_password_whatever_the_config_says(server_address):
    d = DashboardConfig(host="127.0.0.1")
    with pytest.raises(auth.AuthConfigError, match="not loopback"):
        auth.access_policy(d, server_address=server_address)
    with_pw = DashboardConfig(host="127.0.0.1", operator_password_hash=PW)
    assert auth.access_policy(with_pw, server_address=server_address).login_required


def test_loopback_bind_without_password_is_a_reader_and_a_proxy_makes_it_remote():
    d = DashboardConfig(host="127.0.0.1")
    p = auth.access_policy(d, server_address="127.0.0.1")
    assert not p.login_required and p.anonymous_role == auth.READER and not auth.can_act(p.anonymous_role)
    assert auth.access_policy(d).anonymous_role == auth.READER
    for headers in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "1.2.3.4"}):
        assert auth.is_proxied(headers)
        with pytest.raises(auth.AuthConfigError, match="reverse proxy"):
            auth.access_policy(d, server_address="127.0.0.1", proxied=True)
    assert not auth.is_proxied({"Host": "localhost:8501", "User-Agent": "x"})
    assert auth.access_policy(DashboardConfig(operator_password_hash=PW), server_address="127.0.0.1",
                              proxied=True).login_required


def test_require_operator():
    auth.require_operator(auth.OPERATOR)
    for role in (auth.READER, None, "", "admin"):
        with pytest.raises(auth.NotAuthorized):
            auth.require_operator(role)


@pytest.mark.servers
def test_unset_server_address_refuses_to_serve_without_password(env):
    """A bare `streamlit run app.py` binds every interface: the app refuses, whatever dashboard.host is."""
    from streamlit import config as st_config

    env()
    st_config.set_option("server.address", None)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert any("refuses to serve" in e.value and "every interface" in e.value for e in at.error)
    assert not at.metric and not at.dataframe


@pytest.mark.servers
def test_handlers_recheck_the_role_when_a_click_reaches_them(env, monkeypatch):
    """A click that reaches an action handler from a session that is not an operator (a Streamlit
    that does not enforce `disabled`, a forged websocket message): simulated by rendering the
    buttons enabled for a reader. The handler itself refuses; nothing is sent or recorded."""
    cfg, db, s = env(reader_password_hash=OPERATOR_HASH)
    monkeypatch.setattr(ui.Context, "can_act", property(lambda self: True))
    for key in ("hold", "release", "ack"):
        at = run_app("views/incidents.py", session={ui._ROLE: auth.READER}, incident=s.incident_id)
        assert not at.button(key=key).disabled
        at.button(key=key).click().run()
        assert not at.exception
        assert any("operator role" in e.value for e in at.error), key
    assert _control_records(cfg) == []
    assert db.execute("SELECT count() FROM {db}.audit_log") == [(0,)]


@pytest.mark.servers
def test_anonymous_loopback_session_is_a_reader(env):
    cfg, db, s = env()
    anon = run_app("views/incidents.py", incident=s.incident_id)
    assert anon.button(key="hold").disabled and anon.button(key="ack").disabled
    assert any("operator role" in c.value for c in anon.caption)


@pytest.mark.servers
def test_operator_note_is_redacted_in_control_topic_and_audit_log(env):
    cfg, db, s = env(operator_password_hash=OPERATOR_HASH)
    at = run_app("views/incidents.py", session={ui._ROLE: auth.OPERATOR}, incident=s.incident_id)
    at.text_input(key="action_reason").set_value("customer jane.canary@clinic.example\r\ncomplained").run()
    at.button(key="hold").click().run()
    at.button(key="ack").click().run()
    assert not at.exception
    (_, doc), = _control_records(cfg)
    assert doc["reason"] == "customer j***@clinic.example complained"
    rows = db.execute("SELECT action, target, detail FROM {db}.audit_log")
    assert len(rows) == 2
    text = json.dumps(rows)
    assert "jane.canary" not in text and "j***@clinic.example" in text


def test_weak_password_hashes_are_refused():
    import hashlib
    sha = hashlib.sha256(b"s3cret-pass").hexdigest()
    for weak in (sha, auth.hash_password("s3cret-pass", iterations=1000)):
        with pytest.raises(auth.AuthConfigError, match="too weak"):
            auth.access_policy(DashboardConfig(host="0.0.0.0", operator_password_hash=weak))
    assert auth.access_policy(DashboardConfig(host="0.0.0.0", operator_password_hash=PW)).login_required


def test_login_throttle_is_process_wide_and_grows():
    now = [0.0]
    t = auth.LoginThrottle(window_s=60, max_delay_s=5, clock=lambda: now[0])
    assert t.delay() == 0
    for _ in range(3):
        t.failed()
    assert t.delay() == 3                      # any session sees the same count
    for _ in range(10):
        t.failed()
    assert t.delay() == 5
    now[0] = 61
    assert t.delay() == 0
