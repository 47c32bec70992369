"""``make screenshots``: the dashboard in headless Chromium, on realistic data, as PNGs.

Starts a throw-away local stack, loads simulated traffic with its incidents detected for real
(``demo_data``), serves the app headless on a free port and drives Debian's chromium/chromedriver
with Selenium. Each page is captured only once it shows the loaded numbers and Streamlit has
finished running (a bare ``--screenshot`` would capture the loading skeleton). Output:
``docs/screenshots/{live,incidents,incident,incident-exposure,search,services}.png``.

The helpers (``start_app``, ``make_driver``, ``wait_for_text``, ``settle``) are shared with the
browser test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--hide-scrollbars", "--force-device-scale-factor=1")
WINDOW = (1400, 1000)


def write_config(cfg, path: Path) -> Path:
    from mailaudit import tomlw

    path.write_text(tomlw.dumps(dataclasses.asdict(cfg)))
    path.chmod(0o600)                       # it holds the hash key
    return path


def start_app(config_path: Path, port: int, log_path: Path, host: str = "127.0.0.1",
              timeout_s: float = 60.0) -> subprocess.Popen:
    """Serve the app like ``mailaudit dashboard`` does, and wait for Streamlit's health check."""
    from mailaudit.dashboard.server import child_env, streamlit_argv

    env = child_env(config_path, base={k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(streamlit_argv(host, port), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_app(proc)
    raise RuntimeError(f"streamlit not healthy after {timeout_s:.0f}s; see {log_path}")


def stop_app(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def make_driver(window: tuple[int, int] = WINDOW):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={window[0]},{window[1]}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    viewport(driver, *window)
    return driver


def viewport(driver, width: int, height: int) -> None:
    """Exactly this many CSS pixels of page (the window size includes the browser's own chrome)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def wait_for_text(driver, *texts: str, timeout_s: float = 60.0) -> None:
    """Until every text is visible in the page body (the page has rendered the data)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return all(t in body for t in texts)

    WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(shown, message=f"waiting for {texts!r}")


def settle(driver, timeout_s: float = 30.0, quiet_s: float = 1.5) -> None:
    """Until Streamlit has stopped running the script and the charts have drawn."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    calm_since = None
    while time.monotonic() < deadline:
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        skeleton = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSkeleton"]')
        if running or skeleton:
            calm_since = None
        elif calm_since is None:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet_s:
            return
        time.sleep(0.2)


def _tab(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    for t in driver.find_elements(By.CSS_SELECTOR, '[role="tab"]'):
        if t.text.startswith(label):
            t.click()
            return
    raise RuntimeError(f"no tab {label!r}")


def _search(driver, address: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Address"]')
    box.clear()
    box.send_keys(address)
    box.send_keys(Keys.TAB)
    for b in driver.find_elements(By.CSS_SELECTOR, "button"):
        if b.text.strip().endswith("Search"):
            b.click()
            return
    raise RuntimeError("no Search button")


def capture(config_path: Path, out_dir: Path, open_incident: str | None, search_address: str | None,
            work: Path) -> list[Path]:
    from mailaudit.stack import free_port

    port = free_port()
    proc = start_app(config_path, port, work / "streamlit.log")
    driver = make_driver()
    shots = []
    base = f"http://127.0.0.1:{port}"
    try:
        def shot(name: str, path: str, *texts: str, action=None, height: int = WINDOW[1]) -> None:
            viewport(driver, WINDOW[0], height)
            driver.get(base + path)
            wait_for_text(driver, *texts)
            if action:
                action()
            settle(driver)
            target = out_dir / f"{name}.png"
            driver.save_screenshot(str(target))
            shots.append(target)
            print(f"wrote {target}", flush=True)

        shot("live", "/", "Messages / s by service", "Open incidents", "Consumer lag", height=1250)
        shot("incidents", "/incidents", "incidents ·")
        if open_incident:
            page = f"/incidents?incident={open_incident}"
            shot("incident", page, "Exposed addresses", "Response", "Addresses exposed", height=1300)

            def exposure_tab():
                _tab(driver, "Exposure")
                wait_for_text(driver, "most widely seen first", "Download CSV")
            shot("incident-exposure", page, "Exposed addresses", action=exposure_tab, height=1300)
        if search_address:
            def go():
                _search(driver, search_address)
                wait_for_text(driver, "newest first")
            shot("search", "/search", "Results appear here", action=go)
        shot("services", "/services?service=internal", "Baselines", "Detection thresholds", height=1700)
    finally:
        driver.quit()
        stop_app(proc)
    return shots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/screenshots", help="directory for the PNGs")
    p.add_argument("--hours", type=float, default=24.0, help="hours of simulated history (default 24)")
    p.add_argument("--rate", type=float, default=3.0, help="simulated events/s (default 3)")
    args = p.parse_args(argv)

    from mailaudit.config import Config
    from mailaudit.dashboard import aggregates, demo_data
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.schema import migrate
    from mailaudit.ingest.topics import create_topics
    from mailaudit.stack import LocalStack

    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mailaudit-screens-"))
    stack = LocalStack(work / "stack", tied=True)
    info = stack.up()
    try:
        cfg = Config()
        cfg.kafka.bootstrap = info.kafka_bootstrap
        cfg.clickhouse.url = info.clickhouse_url
        cfg.privacy.hash_key = stack.hash_key()
        cfg.state_dir = str(work / "state")
        create_topics(cfg.kafka)
        db = Database(cfg.clickhouse)
        migrate(db, cfg.retention)
        aggregates.ensure(db, cfg.retention)
        loaded = demo_data.load(cfg, db, hours=args.hours, rate=args.rate, log=lambda s: print(s, flush=True))
        db.disconnect()
        config_path = write_config(cfg, work / "config.toml")
        capture(config_path, out_dir, loaded.open_incident, loaded.exposed_sample, work)
    finally:
        stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
