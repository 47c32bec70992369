"""The dashboard served by ``streamlit run`` (as ``mailaudit dashboard`` serves it) in headless Chromium.

AppTest checks the scripts; this checks what a browser actually receives: the app starts with its
real command line, renders the seeded numbers into the DOM, and the incident page opens by URL.
"""

from __future__ import annotations

import pytest

from dashboard_seed import seed
from helpers import write_config
from mailaudit.dashboard import aggregates
from mailaudit.dashboard.screenshots import make_driver, settle, start_app, stop_app, wait_for_text
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics
from mailaudit.stack import free_port

pytestmark = [pytest.mark.browser, pytest.mark.servers]


def test_live_and_incident_pages_render_seeded_numbers_in_chromium(make_cfg, tmp_path):
    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    aggregates.ensure(db)
    create_topics(cfg.kafka)
    s = seed(db, cfg)
    port = free_port()
    proc = start_app(write_config(cfg, tmp_path / "dash.toml"), port, tmp_path / "streamlit.log")
    driver = make_driver()
    try:
        base = f"http://127.0.0.1:{port}"
        driver.get(base + "/")
        messages = f"{sum(s.messages_last_hour.values()):,}"           # 173
        wait_for_text(driver, "Messages / s by service", "Consumer lag", messages, timeout_s=90)
        settle(driver)
        body = driver.find_element("tag name", "body").text
        assert "Open incidents" in body and "Traceback" not in body and "Error" not in body

        driver.get(f"{base}/incidents?incident={s.incident_id}")
        wait_for_text(driver, "Concatenated To: header", "Exposed addresses", "Hold campaign", timeout_s=90)
        settle(driver)
        assert "spring-sale" in driver.find_element("tag name", "body").text
        next(t for t in driver.find_elements("css selector", '[role="tab"]') if t.text == "Headers").click()
        wait_for_text(driver, "Message-ID:", "shown to strangers 11")
        body = driver.find_element("tag name", "body").text
        assert "a***@gmail.com" in body and "alice@gmail.com" not in body     # header sample, masked
    finally:
        driver.quit()
        stop_app(proc)
