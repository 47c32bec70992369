"""The dashboard served by ``streamlit run`` (as ``mailaudit dashboard`` serves it) in headless Chromium.

AppTest checks the scripts; this checks what a browser actually receives: the app starts with its
real command line, renders the seeded numbers into the DOM, and the incident page opens by URL.
"""

from __future__ import annotations

import pytest

from dashboard_seed import seed
from helpers import write_config
from mailaudit.dashboard import aggregates
from mailaudit.dashboard import ui
from mailaudit.dashboard.screenshots import make_driver, settle, start_app, stop_app, viewport, wait_for_text
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
        viewport(driver, 1280, 1000)                       # the narrowest common window: its cards too
        settle(driver)
        assert not [c for c in driver.execute_script(_CARDS_JS) if c["overflow"]]
        for probe in WIDEST + WIDEST_TIMES:
            cut = driver.execute_script(_PROBE_JS, probe)
            assert not cut, f"incident page at 1280 px: {probe!r} would be cut in {cut}"
        next(t for t in driver.find_elements("css selector", '[role="tab"]') if t.text == "Headers").click()
        wait_for_text(driver, "Message-ID:", "shown to strangers 11")
        body = driver.find_element("tag name", "body").text
        assert "a***@gmail.com" in body and "alice@gmail.com" not in body     # header sample, masked

        # Busy-site numbers (six and seven digits) in the Live cards, at common window widths.
        messages, recipients = _add_bulk_traffic(db, 123_457, 9_876_543)
        messages += sum(s.messages_last_hour.values())
        for width in (1280, 1400, 1600, 1920):
            viewport(driver, width, 1000)
            driver.get(base + "/")
            wait_for_text(driver, "Messages / s by service", ui.fmt_card(messages), timeout_s=90)
            settle(driver)
            cards = driver.execute_script(_CARDS_JS)
            assert len(cards) == 6, cards
            cut = [c for c in cards if c["overflow"]]
            assert not cut, f"{width} px: metric values cut: {cut}"
            values = {c["label"]: c["value"] for c in cards}
            assert values["Messages"] == ui.fmt_card(messages), (width, values)
            assert values["Recipients"] == ui.fmt_card(recipients), (width, values)
            # The widest text a card can hold (the formatters' longest outputs) fits in every card too.
            for probe in WIDEST:
                cut = driver.execute_script(_PROBE_JS, probe)
                assert not cut, f"{width} px: {probe!r} would be cut in {cut}"
    finally:
        driver.quit()
        stop_app(proc)


# Each metric card: its label, its value text, and whether any box inside the value is narrower than
# its content (the browser then clips it or draws an ellipsis).
_CARDS_JS = """
return Array.from(document.querySelectorAll('[data-testid="stMetric"]')).map(m => {
  const v = m.querySelector('[data-testid="stMetricValue"]');
  const boxes = [v, ...v.querySelectorAll('*')];
  return {label: m.querySelector('[data-testid="stMetricLabel"]').innerText.trim(), value: v.innerText.trim(),
          overflow: boxes.some(b => b.scrollWidth > b.clientWidth + 1)};
});
"""


# The longest strings ui.fmt_card / ui.fmt_rate produce (digits drawn as 8, about the widest glyph).
WIDEST = sorted({ui.fmt_card(n).translate(str.maketrans("0123456789", "8888888888"))
                 for n in (9_999, 99_949, 999_499, 99_949_999, 999_499_999, 99_949_999_999)}
                | {ui.fmt_rate(x).translate(str.maketrans("0123456789", "8888888888"))
                   for x in (9_999.0, 99_949.0, 99.9, 9.99)})
WIDEST_TIMES = sorted({ui.fmt_duration_card(s).translate(str.maketrans("0123456789", "8888888888"))
                       for s in (59, 3599, 86399, 99 * 86400, 999 * 86400)} | {"88:88"})

# Put ``probe`` in place of every card's value text, measure, put the text back: the labels of cut ones.
_PROBE_JS = """
const probe = arguments[0], cut = [];
for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
  const v = m.querySelector('[data-testid="stMetricValue"]');
  const p = v.querySelector('p') || v;
  const old = p.innerHTML;
  p.textContent = probe;
  const boxes = [v, ...v.querySelectorAll('*')];
  if (boxes.some(b => b.scrollWidth > b.clientWidth + 1)) cut.push(m.innerText.split('\\n')[0]);
  p.innerHTML = old;
}
return cut;
"""


def _add_bulk_traffic(db, messages: int, recipients: int) -> tuple[int, int]:
    """``messages`` minimal events of a service ``bulk`` in the last hour, ``recipients`` envelope
    recipients between them (no addresses: only the counted columns)."""
    import datetime as dt
    import time
    import uuid

    now_ms = int(time.time() * 1000) - 600_000
    ms = [now_ms - (i % 1800) * 1000 for i in range(messages)]
    env = [1] * messages
    env[0] = recipients - (messages - 1)
    db.insert("events", {
        "event_id": [uuid.UUID(int=(0xB0 << 120) + i) for i in range(messages)],
        "sent_at": [dt.datetime.fromtimestamp(m // 1000, dt.timezone.utc) for m in ms],
        "sent_ms": ms, "service": ["bulk"] * messages, "env_count": env,
    })
    return messages, recipients
