"""Session-wide real servers, and per-test isolated configs on top of them.

The ClickHouse server and the Kafka-protocol broker start once per test session (a consumer-group
join alone costs seconds), on free loopback ports with a throw-away state directory, and are always
torn down. Each test gets its own ClickHouse database and its own topic names through ``make_cfg``,
so tests share servers but never data.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mailaudit.config import Config
from mailaudit.stack import LocalStack


_TEARDOWN: dict[str, float] = {}     # what the session's teardown cost, said in the terminal summary


@pytest.fixture(scope="session")
def stack_dir():
    d = Path(tempfile.mkdtemp(prefix="mailaudit-test-"))
    yield d
    if os.environ.get("MAILAUDIT_KEEP_TEST_STATE"):
        print(f"test state kept in {d}")
    else:
        t = time.monotonic()
        _discard(d)
        _TEARDOWN["state directory handed over"] = time.monotonic() - t


def _discard(d: Path) -> None:
    """Removes the session's directory without making the run wait for it. After the whole suite it
    holds every test's ClickHouse parts (18.16 writes a directory of files per inserted part) and
    detector state: the CI-like run of session 6 spent 238 s in the session's teardown, of which
    stopping the two servers can take at most ~50 s. A detached ``rm -rf`` does it after pytest
    has returned; without ``rm`` it is removed here."""
    try:
        subprocess.Popen(["rm", "-rf", "--", str(d)], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def local_stack(stack_dir):
    """The LocalStack object itself (fault tests stop/start its servers)."""
    s = LocalStack(stack_dir / "stack", tied=True)
    s.up()
    yield s
    t = time.monotonic()
    s.down()
    _TEARDOWN["servers stopped"] = time.monotonic() - t


def pytest_terminal_summary(terminalreporter):
    if _TEARDOWN:
        terminalreporter.write_line("session teardown: " + ", ".join(f"{k} in {v:.1f} s" for k, v in _TEARDOWN.items()))


@pytest.fixture(scope="session")
def stack(local_stack):
    return local_stack.info()


@pytest.fixture(autouse=True)
def _show_server_logs_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "local_stack" in request.fixturenames:
        print(request.getfixturevalue("local_stack").log_tail())


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def make_cfg(stack, local_stack):
    """Factory: a Config on the session servers with a unique database and unique topic names."""
    made = []

    def factory(**overrides) -> Config:
        uid = uuid.uuid4().hex[:10]
        cfg = Config()
        cfg.kafka.bootstrap = stack.kafka_bootstrap
        prefix = f"t{uid}."
        cfg.kafka.topic_events = prefix + "mail.headers"
        cfg.kafka.topic_dlq = prefix + "mail.headers.dlq"
        cfg.kafka.topic_alerts = prefix + "mail.alerts"
        cfg.kafka.topic_control = prefix + "mail.control"
        cfg.kafka.ingest_group = prefix + "ingest"
        cfg.kafka.detect_group = prefix + "detect"
        cfg.kafka.session_timeout_ms = 6000
        cfg.kafka.heartbeat_interval_ms = 1000
        cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{stack.clickhouse_port}/t_{uid}"
        cfg.privacy.hash_key = secrets.token_hex(16)
        cfg.ingest.batch_time_s = 0.3
        cfg.ingest.retry_initial_s = 0.1
        cfg.ingest.retry_max_s = 1.0
        cfg.state_dir = str(local_stack.dir.parent / f"state-{uid}")
        for path, value in overrides.items():
            section, _, name = path.partition("__")
            setattr(getattr(cfg, section), name, value) if name else setattr(cfg, section, value)
        made.append(cfg)
        return cfg

    yield factory


# --- marker guard ----------------------------------------------------------------------------------
# `make test-fast` ("no servers") deselects by marker; a test that reaches the session servers without
# the marker would start them there. Any test whose fixture closure holds one of these fails instead.
SERVER_FIXTURES = frozenset({"stack", "local_stack", "make_cfg"})


def unmarked_server_tests(items) -> dict:
    """{item: server fixtures it uses} for every item using a server fixture without ``servers``."""
    out = {}
    for item in items:
        uses = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses and item.get_closest_marker("servers") is None:
            out[item] = sorted(uses)
    return out


def pytest_collection_modifyitems(config, items):
    for item, uses in unmarked_server_tests(items).items():
        item.stash[_UNMARKED] = uses


_UNMARKED = pytest.StashKey[list]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    uses = item.stash.get(_UNMARKED, None)
    if uses:
        pytest.fail(f"{item.nodeid} uses the session servers ({', '.join(uses)}) but is not marked "
                    "@pytest.mark.servers", pytrace=False)
