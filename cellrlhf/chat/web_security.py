"""Who may use ``cellrlhf serve`` and who may download what.

- :func:`is_loopback` / :func:`parse_auth`: the login a server needs when ``--host`` makes it
  reachable from other machines (``--auth USER:PASS`` or ``CELLRLHF_SERVE_AUTH``).
- :class:`ClientGuard`: ASGI middleware that gives every browser (or HTTP client keeping
  cookies) a random, HttpOnly client cookie, and answers 403 when a client asks for a prediction
  file that another client made (:class:`DownloadOwners`). Gradio serves any cached file to
  whoever knows its URL; the guard makes a prediction's URL useless to everyone but its owner.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import threading
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import unquote

__all__ = [
    "AUTH_ENV",
    "CLIENT_COOKIE",
    "ClientGuard",
    "DownloadOwners",
    "client_id",
    "is_loopback",
    "parse_auth",
]

AUTH_ENV = "CELLRLHF_SERVE_AUTH"
CLIENT_COOKIE = "cellrlhf-client"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_FILE_ROUTE = "/file="


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None, *, source: str = "--auth") -> list[tuple[str, str]] | None:
    """``"user:pass"`` (several separated by commas) as gradio's ``auth`` list; ``None`` if empty.

    Raises
    ------
    ValueError
        An entry without ``:``, or with an empty user name or password.
    """
    if text is None or not text.strip():
        return None
    pairs = []
    for entry in text.split(","):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(
                f"{source}: give USER:PASSWORD (several separated by commas), e.g. "
                "alice:s3cret; got an entry without a user name or password."
            )
        pairs.append((user, password))
    return pairs


def client_id(request) -> str | None:
    """The client cookie of a gradio request (``None`` without :class:`ClientGuard`)."""
    raw = getattr(request, "request", None) if request is not None else None
    cookies = getattr(raw, "cookies", None) or {}
    value = cookies.get(CLIENT_COOKIE)
    return value if value and _TOKEN.match(value) else None


class DownloadOwners:
    """Prediction files and the clients that may fetch them (thread-safe)."""

    def __init__(self):
        self._owners: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: str | os.PathLike) -> str:
        return str(Path(path).resolve())

    def grant(self, path: str | os.PathLike, client: str) -> None:
        """Let ``client`` fetch ``path`` (the same file made by two clients is both theirs)."""
        with self._lock:
            self._owners.setdefault(self._key(path), set()).add(client)

    def allowed(self, path: str | os.PathLike, client: str | None) -> bool:
        """Whether ``client`` may fetch ``path`` (files nobody registered: yes)."""
        with self._lock:
            owners = self._owners.get(self._key(path))
        return owners is None or (client is not None and client in owners)

    def revoke(self, client: str) -> list[str]:
        """Forget ``client``'s grants; returns the files nobody owns any more."""
        orphaned = []
        with self._lock:
            for key, owners in list(self._owners.items()):
                owners.discard(client)
                if not owners:
                    orphaned.append(key)
        return orphaned


def _cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    jar = SimpleCookie()
    for name, value in headers:
        if name.lower() == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
    return {k: m.value for k, m in jar.items()}


class ClientGuard:
    """ASGI middleware: a client cookie for everyone, prediction files for their owners only.

    Parameters
    ----------
    app
        The wrapped ASGI app (gradio's).
    owners
        The :class:`DownloadOwners` the app's predictions are registered in.
    """

    def __init__(self, app, owners: DownloadOwners):
        self.app = app
        self.owners = owners

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers", []))
        client = _cookies(headers).get(CLIENT_COOKIE)
        new_client = None
        if not client or not _TOKEN.match(client):
            client = new_client = secrets.token_urlsafe(32)
            headers.append((b"cookie", f"{CLIENT_COOKIE}={client}".encode()))
            scope = {**scope, "headers": headers}
        path = scope.get("path", "")
        if _FILE_ROUTE in path:
            target = unquote(path.split(_FILE_ROUTE, 1)[1])
            if not self.owners.allowed(target, client):
                await _forbidden(send)
                return

        async def send_with_cookie(message):
            if new_client and message["type"] == "http.response.start":
                cookie = f"{CLIENT_COOKIE}={new_client}; Path=/; HttpOnly; SameSite=Lax"
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)


async def _forbidden(send) -> None:
    body = b"This prediction belongs to another session."
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
