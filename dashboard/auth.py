"""Who may see the dashboard and who may act from it.

The dashboard shows where mail went; on a shared host that is sensitive, so it refuses to listen on
anything but loopback without a password, and it separates looking (reader) from acting (operator:
acknowledge, hold, release). "Listens on" is decided from the address the server really binds
(Streamlit's ``server.address``, empty = every interface), not only from ``dashboard.host``: a bare
``streamlit run app.py`` binds every interface whatever the config says. A request that came through
a reverse proxy (forwarding headers) is remote even though it reaches a loopback socket. An anonymous
session (loopback, no password configured, no proxy) is a *reader*: acting needs the operator
password. Passwords are never stored, only their hashes in the config
(``pbkdf2_sha256$iterations$salt$hash`` with at least ``MIN_ITERATIONS``; an unsalted sha256 digest
is refused: one GPU tries billions a second), and compared in constant time. Wrong passwords are
slowed process-wide (``LoginThrottle``), not per browser session, which a script opens afresh.

Pure: no Streamlit here, so the policy is unit-tested without a browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass

from mailaudit.config import DashboardConfig

READER = "reader"
OPERATOR = "operator"

PBKDF2_PREFIX = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 310_000
MIN_ITERATIONS = 100_000      # configured hashes below this are refused (issue 14)
# Request headers a reverse proxy adds: their presence means the client is not on this machine.
PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host")


class AuthConfigError(ValueError):
    """The dashboard must not start with this configuration (the message says why)."""


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: str | None = None) -> str:
    """The string to put in ``reader_password_hash`` / ``operator_password_hash``."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("utf-8"), iterations)
    return f"{PBKDF2_PREFIX}${iterations}${salt}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; a malformed or empty ``stored`` never matches."""
    if not stored or password is None:
        return False
    stored = stored.strip()
    if stored.startswith(PBKDF2_PREFIX + "$"):
        parts = stored.split("$")
        if len(parts) != 4:
            return False
        _, iterations, salt, expected = parts
        try:
            n = int(iterations)
        except ValueError:
            return False
        if n < 1 or n > 10_000_000:
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("utf-8"), n).hex()
        return hmac.compare_digest(got, expected.lower())
    if len(stored) == 64 and all(c in "0123456789abcdefABCDEF" for c in stored):
        got = hashlib.sha256(password.encode("utf-8")).hexdigest()
        return hmac.compare_digest(got, stored.lower())
    return False


def is_loopback(host: str) -> bool:
    """Only a loopback bind keeps the dashboard private to this machine without a password."""
    h = (host or "").strip().strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AccessPolicy:
    login_required: bool
    # The role of an anonymous user when no login is required (loopback, no passwords configured).
    anonymous_role: str | None


_FROM_CONFIG = object()


def access_policy(dcfg: DashboardConfig, server_address: object = _FROM_CONFIG,
                  proxied: bool = False) -> AccessPolicy:
    """Decide whether a login is needed; raise if the setup is unsafe.

    ``server_address`` is the address the server actually binds (Streamlit's ``server.address``;
    None or "" = every interface); left out (the CLI's check before it starts Streamlit with
    ``--server.address dashboard.host``), ``dashboard.host`` is that address. Either one off
    loopback makes the dashboard exposed. ``proxied``: the request carries a reverse proxy's
    forwarding headers, so its client is remote whatever socket it came in on.

    Configured passwords are always enforced (also on loopback: the operator asked for them). An
    exposed or proxied dashboard requires at least one password hash. Anonymous is a reader.
    """
    has_any = bool(dcfg.reader_password_hash or dcfg.operator_password_hash)
    bind = dcfg.host if server_address is _FROM_CONFIG else (server_address or "")
    for name in ("reader_password_hash", "operator_password_hash"):
        value = getattr(dcfg, name)
        if value and not _well_formed(value):
            raise AuthConfigError(
                f"dashboard.{name} is not a pbkdf2_sha256$iterations$salt$hash string or a sha256 hex digest")
        if value and not _strong(value):
            raise AuthConfigError(
                f"dashboard.{name} is too weak (an unsalted sha256 digest, or fewer than {MIN_ITERATIONS} "
                "pbkdf2 iterations): make a new one with `mailaudit dashboard --hash-password`")
    hint = ("set dashboard.operator_password_hash and/or dashboard.reader_password_hash "
            "(mailaudit dashboard --hash-password prints one)")
    if not is_loopback(dcfg.host) and not has_any:
        raise AuthConfigError(f"dashboard.host is {dcfg.host!r} (not loopback) but no password hash is "
                              f"configured: {hint}")
    if not is_loopback(str(bind)) and not has_any:
        where = repr(bind) if bind else "every interface (server.address unset)"
        raise AuthConfigError(f"the server listens on {where}, not loopback, but no password hash is "
                              f"configured: {hint}; or start it with `mailaudit dashboard`")
    if proxied and not has_any:
        raise AuthConfigError(f"this request came through a reverse proxy (forwarding headers), so its "
                              f"client is remote, but no password hash is configured: {hint}")
    if has_any:
        return AccessPolicy(login_required=True, anonymous_role=None)
    return AccessPolicy(login_required=False, anonymous_role=READER)


def is_proxied(headers) -> bool:
    """True when a reverse proxy's forwarding headers are present (``headers``: any mapping)."""
    try:
        names = {str(k).lower() for k in (headers or {}).keys()}
    except Exception:  # noqa: BLE001 - unknown shape: assume the worst
        return True
    return any(h in names for h in PROXY_HEADERS)


class NotAuthorized(PermissionError):
    """An action was attempted by a session whose role may not act."""


def require_operator(role: str | None) -> None:
    """Every action handler calls this itself: a widget's ``disabled=`` is a display hint, which not
    every Streamlit version enforces on the server."""
    if not can_act(role):
        raise NotAuthorized(f"this action needs the operator role (session role: {role or 'none'})")


def login(dcfg: DashboardConfig, password: str) -> str | None:
    """The role this password grants, or None. Both hashes are always checked (no timing hint)."""
    op = verify_password(password, dcfg.operator_password_hash)
    rd = verify_password(password, dcfg.reader_password_hash)
    if op:
        return OPERATOR
    if rd:
        return READER
    return None


def can_act(role: str | None) -> bool:
    return role == OPERATOR


def _strong(value: str) -> bool:
    v = value.strip()
    if not v.startswith(PBKDF2_PREFIX + "$"):
        return False
    try:
        return int(v.split("$")[1]) >= MIN_ITERATIONS
    except (IndexError, ValueError):
        return False


class LoginThrottle:
    """Process-wide slowdown of wrong passwords: each failure in the last ``window_s`` adds a second
    of wait before the next check (at most ``max_delay_s``), whatever session it comes from. A
    success does not reset it (an attacker's one lucky guess must not clear his trail). Thread-safe;
    ``clock`` injectable for tests."""

    def __init__(self, window_s: float = 60.0, max_delay_s: float = 10.0, clock=None):
        import threading
        import time

        self.window_s = window_s
        self.max_delay_s = max_delay_s
        self.clock = clock or time.monotonic
        self._failures: list[float] = []
        self._lock = threading.Lock()

    def delay(self) -> float:
        now = self.clock()
        with self._lock:
            self._failures = [t for t in self._failures if now - t < self.window_s]
            return min(self.max_delay_s, float(len(self._failures)))

    def failed(self) -> None:
        with self._lock:
            self._failures.append(self.clock())
            if len(self._failures) > 10_000:
                del self._failures[:5_000]


THROTTLE = LoginThrottle()


def _well_formed(value: str) -> bool:
    v = value.strip()
    if v.startswith(PBKDF2_PREFIX + "$"):
        parts = v.split("$")
        return len(parts) == 4 and parts[1].isdigit() and bool(parts[2]) and bool(parts[3])
    return len(v) == 64 and all(c in "0123456789abcdefABCDEF" for c in v)


def main() -> int:
    """``python -m mailaudit.dashboard.auth``: read a password (no echo) and print its hash."""
    import getpass
    import sys

    pw = os.environ.get("MAILAUDIT_DASHBOARD_PASSWORD") or getpass.getpass("dashboard password: ")
    if len(pw) < 8:
        print("refusing a password shorter than 8 characters", file=sys.stderr)
        return 2
    print(hash_password(pw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
