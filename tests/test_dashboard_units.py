"""The dashboard's pure parts: login policy, escaping, address lookup, figures, launch command."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from mailaudit.config import ConfigError, DashboardConfig, PrivacyConfig
from mailaudit.dashboard import auth, lookup, stats
from mailaudit.dashboard.server import child_env, streamlit_argv
from mailaudit.ingest.privacy import AddressHasher


# --- auth ------------------------------------------------------------------------------------------

def test_pbkdf2_and_sha256_hashes_verify_only_their_password():
    h = auth.hash_password("correct horse", iterations=100_000)
    assert h.startswith("pbkdf2_sha256$100000$")
    assert auth.verify_password("correct horse", h)
    assert not auth.verify_password("correct horsE", h)
    assert auth.hash_password("x", iterations=100_000) != auth.hash_password("x", iterations=100_000)   # salted
    sha = hashlib.sha256(b"s3cret-pass").hexdigest()
    assert auth.verify_password("s3cret-pass", sha) and auth.verify_password("s3cret-pass", sha.upper())
    assert not auth.verify_password("s3cret-pas", sha)
    for bad in (None, "", "pbkdf2_sha256$x$salt$00", "pbkdf2_sha256$1000$salt", "md5$abc", "abc"):
        assert not auth.verify_password("anything", bad)


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("::1", True), ("[::1]", True),
                                           ("localhost", True), ("127.9.9.9", True), ("0.0.0.0", False),
                                           ("10.0.0.5", False), ("dashboard.example", False), ("", False)])
def test_loopback_detection(host, loopback):
    assert auth.is_loopback(host) is loopback


def test_policy_refuses_an_exposed_dashboard_without_password():
    with pytest.raises(auth.AuthConfigError, match="not loopback"):
        auth.access_policy(DashboardConfig(host="0.0.0.0"))
    with pytest.raises(auth.AuthConfigError, match="operator_password_hash"):
        auth.access_policy(DashboardConfig(host="0.0.0.0", operator_password_hash="plaintext-password"))
    exposed = auth.access_policy(DashboardConfig(host="0.0.0.0", reader_password_hash=auth.hash_password("r" * 10)))
    assert exposed.login_required and exposed.anonymous_role is None
    local = auth.access_policy(DashboardConfig(host="127.0.0.1"))
    assert not local.login_required and local.anonymous_role == auth.READER    # issue 14: never operator
    # passwords configured on loopback are still enforced
    assert auth.access_policy(DashboardConfig(operator_password_hash=auth.hash_password("o" * 10))).login_required


def test_login_gives_the_role_of_the_password():
    d = DashboardConfig(host="0.0.0.0", reader_password_hash=auth.hash_password("reader-pass", iterations=100_000),
                        operator_password_hash=auth.hash_password("operator-pass", iterations=100_000))
    assert auth.login(d, "reader-pass") == auth.READER
    assert auth.login(d, "operator-pass") == auth.OPERATOR
    assert auth.login(d, "nope") is None and auth.login(d, "") is None
    assert auth.can_act(auth.OPERATOR) and not auth.can_act(auth.READER) and not auth.can_act(None)


# --- escaping ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["[click](javascript:alert(1))", "**bold** _it_ `code`", ":red[alarm] :material/home:",
                                  "<img src=x onerror=alert(1)>", "# heading\n- item", "$x^2$", "a|b|c"])
def test_esc_neutralises_markdown_and_directives(text):
    from mailaudit.dashboard.ui import esc

    out = esc(text)
    assert "\n" not in out
    specials = set("\\`*_{}[]()#+-.!|>~:$<&")
    i = 0
    while i < len(out):                      # every special character is preceded by a backslash
        if out[i] == "\\":
            assert out[i + 1] in specials
            i += 2
            continue
        assert out[i] not in specials, (text, out, i)
        i += 1
    assert out.replace("\\", "") == text.replace("\n", " ").replace("\r", " ")


# --- lookup ------------------------------------------------------------------------------------------

def test_address_is_hashed_with_current_and_old_keys():
    p = PrivacyConfig(hash_key="current-key-123", hash_key_id="k2", old_hash_keys="k1:old-key-456, k0:older")
    hashes = lookup.address_hashes(p, "  <Alice@Example.COM> ")
    assert hashes == (AddressHasher(b"current-key-123", "k2").hash("alice@example.com"),
                      AddressHasher(b"old-key-456", "k1").hash("alice@example.com"),
                      AddressHasher(b"older", "k0").hash("alice@example.com"))
    assert all("alice" not in h for h in hashes)
    with pytest.raises(lookup.SearchInputError):
        lookup.address_hashes(p, "not-an-address")
    with pytest.raises(lookup.SearchInputError, match="hash key"):
        lookup.address_hashes(PrivacyConfig(), "a@b.example")
    with pytest.raises(ConfigError):
        lookup.address_hashes(PrivacyConfig(hash_key="k", old_hash_keys="no-colon"), "a@b.example")


# --- figures -----------------------------------------------------------------------------------------

def _t(s):
    return pd.Timestamp(s, unit="s", tz="UTC")


def test_traffic_totals_and_recent_rate():
    df = pd.DataFrame({"time": [_t(0), _t(60), _t(60), _t(120)], "service": ["a", "a", "b", "a"],
                       "messages": [10, 20, 5, 7], "recipients": [10, 40, 5, 7], "leaking": [0, 1, 0, 0],
                       "last_event": [_t(59), _t(119), _t(100), _t(150)]})
    t = stats.traffic_totals(df)
    assert list(t["service"]) == ["a", "b"]
    assert t.iloc[0][["messages", "recipients", "leaking"]].tolist() == [37, 57, 1]
    assert t.iloc[0]["last_event"] == _t(150)
    assert t.iloc[0]["recipients_per_message"] == pytest.approx(57 / 37)
    # complete buckets in [60, 120): 25 messages over 60 s
    assert stats.recent_rate(df, 120, 60) == pytest.approx(25 / 60)
    assert stats.recent_rate(df.iloc[0:0], 120, 60) == 0.0


def test_weighted_quantile_is_exact_on_a_histogram():
    values, weights = [1, 2, 3, 50], [90, 5, 4, 1]
    assert stats.weighted_quantile(values, weights, 0.5) == 1
    assert stats.weighted_quantile(values, weights, 0.95) == 2
    assert stats.weighted_quantile(values, weights, 0.99) == 3
    assert stats.weighted_quantile(values, weights, 1.0) == 50
    assert np.isnan(stats.weighted_quantile([], [], 0.5))


def test_baselines_count_quiet_minutes_as_zero():
    minutes = pd.DataFrame({"service": ["a"] * 3, "time": [_t(0), _t(60), _t(540)], "messages": [4, 6, 10],
                            "recipients": [4, 6, 20], "leaking": [0, 0, 1]})
    dist = pd.DataFrame({"service": ["a", "a"], "recipients_per_message": [1, 2], "messages": [15, 5]})
    rates = stats.per_minute_rates(minutes, "a", until_s=600)
    assert rates.tolist() == [4, 6, 0, 0, 0, 0, 0, 0, 0, 10]
    b = stats.service_baselines(minutes, dist, until_s=600).iloc[0]
    assert (b["messages"], b["recipients"], b["leaking"]) == (20, 30, 1)
    assert b["per_min_median"] == 0 and b["per_min_max"] == 10
    assert (b["rcpt_p50"], b["rcpt_p99"], b["rcpt_max"]) == (1, 2, 2)


def test_hourly_average_divides_by_active_days():
    profile = pd.DataFrame({"service": ["a", "a", "b"], "hour": [9, 10, 3], "messages": [70, 14, 5],
                            "days": [7, 2, 1]})
    h = stats.hourly_average(profile, "a")
    assert len(h) == 24 and h.loc[9, "messages"] == 10 and h.loc[10, "messages"] == 2 and h.loc[0, "messages"] == 0


# --- launch --------------------------------------------------------------------------------------------

def test_streamlit_command_is_headless_on_the_configured_address(tmp_path):
    argv = streamlit_argv("0.0.0.0", 8600)
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("dashboard/app.py")
    pairs = dict(zip(argv[5::2], argv[6::2]))
    assert pairs["--server.address"] == "0.0.0.0" and pairs["--server.port"] == "8600"
    assert pairs["--server.headless"] == "true" and pairs["--browser.gatherUsageStats"] == "false"
    assert pairs["--client.showErrorDetails"] == "type"
    env = child_env(tmp_path / "c.toml", base={"PATH": "/bin"}, overrides={"MAILAUDIT_DASHBOARD_PORT": "8600"})
    assert env["MAILAUDIT_CONFIG"] == str(tmp_path / "c.toml") and env["MAILAUDIT_DASHBOARD_PORT"] == "8600"


def test_dashboard_verb_refuses_exposed_host_without_password(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mailaudit", "dashboard", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 2
    assert "not loopback" in r.stderr and "Traceback" not in r.stderr


def test_card_numbers_are_exact_below_ten_thousand_then_three_figures():
    from mailaudit.dashboard.ui import fmt_card, fmt_rate

    cases = {0: "0", 9_999: "9,999", 10_000: "10.0k", 123_630: "124k", 999_499: "999k", 999_999: "1.00M",
             9_876_543: "9.88M", 9_995_000: "10.0M", 12_345_678: "12.3M", 1_234_567_890: "1.23B", -12_345: "-12.3k",
             None: "–", "x": "–"}
    assert {n: fmt_card(n) for n in cases} == cases
    assert max(len(fmt_card(10 ** k - 1)) for k in range(1, 13)) <= 5
    assert (fmt_rate(9_999.4), fmt_rate(12_345.0), fmt_rate(42.0)) == ("9,999", "12.3k", "42.0")
