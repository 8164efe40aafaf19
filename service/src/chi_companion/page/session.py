"""Browser sessions for the status page: a signed cookie, never a pickled one.

The cookie holds JSON ``{"d": device or null, "exp": unix seconds, "n": nonce}``, base64url,
then ``.`` and an HMAC-SHA256 of that text. Bottle's own signed cookies unpickle what they
read, so one leaked secret would be code execution; plain JSON cannot be.

The secret is random per server process: a restart (which is also how a changed or revoked
key takes effect) signs everyone out, and no secret ever sits on disk.
The CSRF token of a session is an HMAC of its nonce under the same secret: a page form
carries it, and a state-changing request without the right one is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "chi_session"
DEFAULT_TTL_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    device_id: str | None  # None: the operator, who sees every device
    expires: int
    nonce: str

    @property
    def is_operator(self) -> bool:
        return self.device_id is None

    def may_access(self, device_id: str) -> bool:
        return self.is_operator or self.device_id == device_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, ttl_seconds: int = DEFAULT_TTL_SECONDS, secret: bytes | None = None) -> None:
        self.ttl = ttl_seconds
        self._secret = secret or secrets.token_bytes(32)

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode("ascii"), hashlib.sha256).digest())

    def issue(self, device_id: str | None, now: float | None = None) -> tuple[str, Session]:
        session = Session(device_id, int((now or time.time()) + self.ttl), secrets.token_hex(16))
        payload = {"d": session.device_id, "exp": session.expires, "n": session.nonce}
        text = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{text}.{self._sign(text)}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (absent, forged, malformed or expired)."""
        if not cookie or cookie.count(".") != 1:
            return None
        text, signature = cookie.split(".")
        try:
            text.encode("ascii")
        except UnicodeEncodeError:
            return None
        if not hmac.compare_digest(self._sign(text), signature):
            return None
        try:
            payload = json.loads(_unb64(text))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(payload, dict):
            return None
        device, expires, nonce = payload.get("d"), payload.get("exp"), payload.get("n")
        if not (device is None or isinstance(device, str)) or not isinstance(expires, int):
            return None
        if not isinstance(nonce, str) or expires <= (now or time.time()):
            return None
        return Session(device, expires, nonce)

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf:{session.nonce}")

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), str(token))
