"""Who may use the web page: the password, sessions, CSRF tokens and the login rate limit.

The page shows what a house sounds like. On 127.0.0.1 (the default) it needs no password;
any other address needs one (``$SOUND_MONITOR_WEB_PASSWORD`` or ``web.password_file``) and
is refused without it. With a password every page but the login needs a session: an
HttpOnly, SameSite=Strict cookie holding a random token. Every state-changing request
carries the session's CSRF token in the ``X-CSRF-Token`` header (also on loopback: another
site open in the same browser can post to 127.0.0.1 but cannot read the token). Failed
logins are limited per client address. The password is never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from monitor.errors import UserError

PASSWORD_ENV = "SOUND_MONITOR_WEB_PASSWORD"
COOKIE = "sm_session"
SESSION_S = 7 * 86400
LOGIN_TRIES = 5  # failed logins per client address ...
LOGIN_WINDOW_S = 60.0  # ... within this many seconds, then 429 until the window has passed


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_password(password_file: str | None) -> str | None:
    """The page's password: ``web.password_file`` (first line), else the environment."""
    if password_file:
        try:
            lines = Path(password_file).expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise UserError(f"cannot read the web password file {password_file}: {e.strerror or e}") from None
        if not lines or not lines[0].strip():
            raise UserError(f"the web password file {password_file} is empty")
        return lines[0].strip()
    return os.environ.get(PASSWORD_ENV) or None


def check_bind(host: str, password: str | None) -> None:
    """A bind outside loopback without a password is refused (one line)."""
    if not is_loopback(host) and not password:
        raise UserError(
            f"web.listen on {host} (not loopback) needs a password: set ${PASSWORD_ENV} or web.password_file, "
            "or listen on 127.0.0.1"
        )


@dataclass
class Session:
    csrf: str
    expires: float


@dataclass
class Auth:
    """Sessions of one server (in memory: a restart asks for the password again)."""

    password: str | None
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # the token of the page's one implicit session when no password is set (CSRF only)
    open_csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def required(self) -> bool:
        return bool(self.password)

    def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            s = self.sessions.get(token)
            if s is None or s.expires < time.time():
                self.sessions.pop(token, None)
                return None
            return s

    def csrf_ok(self, token: str | None, header: str | None) -> bool:
        if not header:
            return False
        if not self.required:
            return hmac.compare_digest(header, self.open_csrf)
        s = self.session(token)
        return s is not None and hmac.compare_digest(header, s.csrf)

    def limited(self, client: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            recent = [t for t in self.failures.get(client, []) if now - t < LOGIN_WINDOW_S]
            self.failures[client] = recent
            return len(recent) >= LOGIN_TRIES

    def login(self, client: str, password: str) -> str | None:
        """-> a new session token, or None (wrong password; counted for the rate limit)."""
        if not self.required:
            return None
        want = hashlib.sha256(str(self.password).encode()).digest()
        got = hashlib.sha256(password.encode("utf-8", "replace")).digest()
        if not hmac.compare_digest(want, got):
            with self._lock:
                self.failures.setdefault(client, []).append(time.time())
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self.sessions = {k: s for k, s in self.sessions.items() if s.expires > now}
            self.sessions[token] = Session(secrets.token_urlsafe(24), now + SESSION_S)
        return token

    def logout(self, token: str | None) -> None:
        with self._lock:
            self.sessions.pop(token or "", None)
