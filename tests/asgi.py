"""A small raw-ASGI harness: an app that acts on scope["session"] by path, a
recording wrapper around a real backend, and a client with a cookie jar."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest

from asgi_sessions import SessionMiddleware
from asgi_sessions.backends.base import Delta, SessionBackend, SessionRecord
from asgi_sessions.errors import InvalidToken

Message = dict[str, Any]


async def session_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raw ASGI app: /read, /untouched, /set?k=v, /del?k=, /rotate, /login?user=,
    /bind?user= (bind_user: the per-user index), /bind_only?user= (bind_user alone; an
    empty user unbinds), /user (answers the bound user),
    /invalidate, /clear, /expiry?s= or ?at=<epoch>, /fail500 (writes, then 500), /raise (writes,
    then raises before responding)."""
    assert scope["type"] == "http"
    session = scope["session"]
    path = scope["path"]
    query = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
    status = 200
    if path == "/read":
        pass
    elif path == "/set":
        for key, value in query.items():
            session[key] = value
    elif path == "/del":
        for key in query:
            del session[key]
    elif path == "/rotate":
        session.rotate()
    elif path == "/login":
        session.rotate()
        session["user"] = query["user"]
    elif path == "/bind":
        session.bind_user(query["user"])
        session["user"] = query["user"]
    elif path == "/bind_only":
        session.bind_user(query["user"] or None)
    elif path == "/invalidate":
        session.invalidate()
    elif path == "/clear":
        session.clear()
    elif path == "/expiry":
        if "at" in query:  # a fixed expiry at this epoch time
            session.set_expiry(datetime.fromtimestamp(float(query["at"]), UTC))
        else:
            session.set_expiry(int(query["s"]))
        session["x"] = "1"
    elif path == "/fail500":
        session["x"] = "1"
        status = 500
    elif path == "/raise":
        session["x"] = "1"
        raise RuntimeError("handler failed")
    elif path not in ("/untouched", "/user"):
        status = 404
    if path == "/user":
        body = json.dumps({"user_id": session.user_id}).encode()
    else:
        body = json.dumps(dict(session)).encode() if path != "/untouched" else b"{}"
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Recording:
    """Delegates to a real backend and records each call's name."""

    def __init__(self, inner: SessionBackend) -> None:
        self.inner = inner
        self.serializer = inner.serializer
        self.calls: list[str] = []

    async def load(self, token: str, *, now: float, **context: Any) -> SessionRecord | None:
        try:
            record = await self.inner.load(token, now=now, **context)
        except InvalidToken:
            # Refused on its shape or signature, before any store access.
            self.calls.append("load:invalid")
            raise
        self.calls.append("load+refresh" if record is not None and record.refreshed else "load")
        return record

    async def save(
        self,
        token: str | None,
        record: SessionRecord,
        delta: Delta,
        *,
        now: float,
        ttl: int,
        rotate: bool,
    ) -> str:
        self.calls.append("save:rotate" if rotate else "save")
        return await self.inner.save(token, record, delta, now=now, ttl=ttl, rotate=rotate)

    async def touch(self, token: str, record: SessionRecord, *, now: float, ttl: int) -> str | None:
        self.calls.append("touch")
        return await self.inner.touch(token, record, now=now, ttl=ttl)

    async def delete(self, token: str, record: SessionRecord) -> None:
        self.calls.append("delete")
        await self.inner.delete(token, record)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]

    @property
    def set_cookies(self) -> list[str]:
        return self.header_values("set-cookie")

    def json(self) -> Any:
        return json.loads(self.body)


def http_scope(path: str, query: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The scope of an HTTPS GET from 127.0.0.1."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 443),
    }


def websocket_scope(cookie: bytes) -> dict[str, Any]:
    """The scope of a WSS connection to /ws from 127.0.0.1 with this Cookie header."""
    return {
        "type": "websocket",
        "path": "/ws",
        "headers": [(b"cookie", cookie)],
        "scheme": "wss",
        "client": ("127.0.0.1", 1),
    }


async def open_socket(app: Any, cookie: bytes, *, then_disconnect: bool = False) -> list[Message]:
    """Run ``app`` (the middleware around an app) on :func:`websocket_scope`: the client
    connects, then waits for the app to close the socket, or with ``then_disconnect``
    disconnects at its next receive(). Returns the messages the app sent."""
    messages: list[Message] = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop()
        if then_disconnect:
            return {"type": "websocket.disconnect"}
        await asyncio.sleep(3600)
        raise AssertionError("the app never closed the socket")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(websocket_scope(cookie), receive, send)
    return sent


@dataclass
class Client:
    """Drives an ASGI app in-process, keeping cookies like a browser would."""

    app: Any
    jar: dict[str, str] = field(default_factory=dict)

    user_agent: bytes = b"test-agent/1.0"

    async def get(self, target: str, *, cookie: bytes | None = None) -> Response:
        path, _, query = target.partition("?")
        headers: list[tuple[bytes, bytes]] = [(b"user-agent", self.user_agent)]
        if cookie is not None:
            headers.append((b"cookie", cookie))
        elif self.jar:
            headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.jar.items()).encode()))
        scope = http_scope(path, query, headers)
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = sent[0]
        body = b"".join(m.get("body", b"") for m in sent[1:])
        response = Response(start["status"], list(start.get("headers", [])), body)
        for value in response.set_cookies:
            name, _, rest = value.partition("=")
            cookie_value = rest.split(";", 1)[0]
            if "Max-Age=0" in value:
                self.jar.pop(name, None)
            else:
                self.jar[name] = cookie_value
        return response


def make(backend: SessionBackend | None = None, **settings: Any) -> tuple[Client, Recording]:
    from asgi_sessions import MemoryBackend

    recording = Recording(backend if backend is not None else MemoryBackend())
    app = SessionMiddleware(session_app, backend=recording, **settings)  # type: ignore[arg-type]
    return Client(app), recording


async def get_failing(client: Client, path: str) -> None:
    """GET ``path`` of session_app, ``/fail500`` (a 500) or ``/raise`` (the app raises,
    and the exception reaches the server): either way no cookie is set."""
    if path == "/raise":
        with pytest.raises(RuntimeError):
            await client.get(path)
        return
    response = await client.get(path)
    assert response.status == 500
    assert response.set_cookies == []
