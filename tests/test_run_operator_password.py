"""`mailaudit run` makes a one-run operator password when none is configured (an anonymous
dashboard session is only a reader), and never overrides one the user configured."""

from mailaudit.commands.run import _operator_password
from mailaudit.config import Config
from mailaudit.dashboard.auth import access_policy, hash_password, login


def test_run_makes_an_operator_password_that_logs_in_as_operator():
    cfg = Config()
    password = _operator_password(cfg)
    assert password and len(password) >= 16
    assert password not in cfg.dashboard.operator_password_hash      # only the hash is kept
    assert login(cfg.dashboard, password) == "operator"
    assert login(cfg.dashboard, password + "x") is None
    assert access_policy(cfg.dashboard).login_required


def test_run_keeps_a_configured_password():
    cfg = Config()
    cfg.dashboard.reader_password_hash = hash_password("reader-secret", iterations=100_000)
    assert _operator_password(cfg) is None
    assert cfg.dashboard.operator_password_hash is None
    assert _operator_password(Config()) != _operator_password(Config())   # a new one each run
