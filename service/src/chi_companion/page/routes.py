"""The status page's routes: sign-in, overview, a device's drives, a drive, backups.

Every route but the sign-in page needs a session (see page.session). Pages answer HTML,
also when they refuse; the JSON API under /api/v1 is untouched by any of this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bottle import HTTPResponse, request

from ..analysis import routes as analysis_routes
from ..companion import Companion
from ..core.errors import RateLimited
from ..core.http_json import ApiError, header
from ..core.ratelimit import RateLimit
from . import views
from .html import CSP, esc, page
from .session import COOKIE, Session, Sessions

if TYPE_CHECKING:
    from bottle import Bottle

MAX_FORM_BYTES = 4096
MAX_PAGE = 1_000_000
# A person mistyping a key gets 10 tries at once, then one every 6 minutes from that address:
# nothing for a 256-bit key's owner, hopeless for a guesser.
WRONG_KEYS, WRONG_KEYS_PER_HOUR = 10, 10


def html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    all_headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    all_headers.update(headers or {})
    return HTTPResponse(body=body, status=status, headers=all_headers)


def redirect(location: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(status=303, headers={"Location": location, **(headers or {})})


def _cookie(value: str, max_age: int) -> str:
    # Secure is not set: the page is served over plain HTTP on the LAN (see the setup guide).
    return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"


def _form() -> dict[str, str]:
    """A small urlencoded form, read within a limit (sign-in, sign-out, analyse)."""
    if request.environ.get("HTTP_TRANSFER_ENCODING"):
        raise ApiError(411, "length required", "send the form with a Content-Length")
    ctype = request.environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise ApiError(415, "unsupported media type", "send the page's form")
    try:
        length = int(request.environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "bad request", "Content-Length is not an integer") from None
    if length < 0 or length > MAX_FORM_BYTES:
        raise ApiError(413, "payload too large", f"a page form is at most {MAX_FORM_BYTES} bytes")
    return {k: request.forms.getunicode(k) or "" for k in request.forms}


def sign_in_page(
    message: str = "", status: int = 200, headers: dict[str, str] | None = None
) -> HTTPResponse:
    note = f'<p class="flash" id="message">{esc(message)}</p>' if message else ""
    body = (
        f"{note}<p>Sign in with the operator key (every device) or a device key (that device "
        "only): the key from <code>companion.toml</code>.</p>"
        '<form method="post" action="/login" id="sign-in"><label>API key '
        '<input type="password" name="key" autocomplete="current-password" required '
        'size="48"></label> <button type="submit">Sign in</button></form>'
    )
    return html(page("Sign in", body), status, headers)


def routes(app: Bottle, ctx: Companion, sessions: Sessions | None = None) -> None:
    sessions = sessions or Sessions()
    keys = ctx.core.keys

    def current() -> Session | None:
        return sessions.read(request.get_cookie(COOKIE))

    def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
        """Runs ``view(session, ...)`` for a signed-in browser; anyone else goes to sign-in."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = current()
            if session is None:
                return redirect("/login")
            try:
                return view(session, *args, **kwargs)
            except views.BadRequest as exc:
                return show(session, "Bad request", f'<p class="failed">{esc(exc)}</p>', 400)
            except views.Missing as exc:
                return show(session, "Not found", f'<p class="failed">{esc(exc)}</p>', 404)

        return wrapper

    def same_origin() -> None:
        origin = header("Origin")  # as received: a non-UTF-8 byte must not be a 500
        host = header("Host")
        if origin and host and origin.split("://", 1)[-1] != host:
            raise ApiError(403, "forbidden", "cross-origin form")

    def state_changing(session: Session) -> dict[str, str]:
        """The form of a POST, refused without this session's CSRF token or from another
        origin (SameSite=Strict already keeps the cookie off cross-site posts)."""
        same_origin()
        form = _form()
        if not sessions.check_csrf(session, form.get("csrf")):
            raise ApiError(403, "forbidden", "missing or wrong CSRF token; reload the page")
        return form

    def show(session: Session, title: str, body: str, status: int = 200) -> HTTPResponse:
        who = "operator" if session.is_operator else f"device {session.device_id}"
        return html(page(title, body, who, sessions.csrf_token(session)), status)

    def device_or_404(session: Session, device: str) -> None:
        # Another device's pages answer like a missing device: names are not revealed.
        if device not in ctx.config.devices or not session.may_access(device):
            raise html(page("Not found", "<p>No such device.</p>"), 404)

    @app.get("/login")
    def login_form() -> Any:
        return sign_in_page() if current() is None else redirect("/")

    # Wrong keys per source address: a guesser is refused for a while instead of being made
    # to wait, which would hold one of the server's threads per attempt.
    wrong_keys = RateLimit("wrong sign-in keys", per_hour=WRONG_KEYS_PER_HOUR, burst=WRONG_KEYS)

    @app.post("/login")
    def login() -> Any:
        same_origin()  # another site must not sign a visitor in to a session it chose
        source = request.remote_addr or "unknown"
        try:
            wrong_keys.check(source)
        except RateLimited as exc:
            return sign_in_page(
                f"Too many wrong keys from {source}: try again in {exc.retry_after} s.",
                429,
                {"Retry-After": str(exc.retry_after)},
            )
        principal = keys.lookup(_form().get("key"))
        if principal is None:
            with suppress(RateLimited):  # a concurrent wrong key may have used the last token
                wrong_keys.take(source)
            return sign_in_page("That key is not valid here.", 401)
        cookie, _ = sessions.issue(principal.device_id)
        return redirect("/", {"Set-Cookie": _cookie(cookie, sessions.ttl)})

    @app.post("/logout")
    @signed_in
    def logout(session: Session) -> Any:
        state_changing(session)
        return redirect("/login", {"Set-Cookie": _cookie("", 0)})

    @app.get("/")
    @signed_in
    def overview(session: Session) -> Any:
        return show(session, "Overview", views.overview(ctx, session))

    @app.get("/devices/<device>")
    @signed_in
    def device_drives(session: Session, device: str) -> Any:
        device_or_404(session, device)
        raw = request.query.get("page", "1")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
            raise views.BadRequest("page must be a whole number from 1")
        body, _ = views.drives(ctx, device, int(raw))
        return show(session, f"Drives of {device}", body)

    @app.get("/devices/<device>/drives/<drive_id:id>")
    @signed_in
    def drive(session: Session, device: str, drive_id: int) -> Any:
        device_or_404(session, device)
        wanted = list(dict.fromkeys(request.query.getall("p")))
        queued = request.query.get("queued", "")
        flash = f"Analysis {queued} queued; reload to see its progress." if queued.isdigit() else ""
        body = views.drive(ctx, device, drive_id, wanted, sessions.csrf_token(session), flash)
        return show(session, f"Drive {drive_id}", body)

    @app.post("/devices/<device>/drives/<drive_id:id>/analyze")
    @signed_in
    def analyze(session: Session, device: str, drive_id: int) -> Any:
        device_or_404(session, device)
        state_changing(session)
        body = {"deviceId": device, "driveId": drive_id, "force": True}
        try:
            answer = analysis_routes.submit(ctx.core, ctx.analysis, session.device_id, body)
        except ApiError as exc:
            body = f'<p class="failed">{esc(exc.detail)}</p>'
            return show(session, "Not queued", body, exc.status_code)
        job_id = json.loads(answer.body)["id"]
        return redirect(f"/devices/{quote(device)}/drives/{drive_id}?queued={job_id}")

    @app.get("/backups")
    @signed_in
    def backups(session: Session) -> Any:
        return show(session, "Backups and analyses", views.backups(ctx, session))

    @app.get("/backups/<backup_id:id>/file")
    @signed_in
    def backup_file(session: Session, backup_id: int) -> Any:
        backup = ctx.backups.get(backup_id)
        if backup is None or not session.may_access(backup.device_id):
            return show(session, "Not found", "<p>No such backup.</p>", 404)
        try:
            # O_NOFOLLOW: a symlink planted in the backup tree must not serve another file.
            fd = os.open(ctx.backups.path_of(backup), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return show(session, "File missing", "<p>The backup's file is gone.</p>", 404)
        fh = os.fdopen(fd, "rb")
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(os.fstat(fd).st_size),
            "X-Content-SHA256": backup.sha256,
            "Content-Disposition": f'attachment; filename="{backup.name}"',
        }
        return HTTPResponse(body=fh, status=200, headers=headers)
