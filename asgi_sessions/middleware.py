"""SessionMiddleware: a pure ASGI middleware that loads the session before the app
runs and commits it when the response starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from datetime import timedelta
from typing import Any

from asgi_sessions._asgi import respond
from asgi_sessions._log import fingerprint, logger
from asgi_sessions.backends.base import Delta, SessionBackend, SessionRecord, is_grace_alias
from asgi_sessions.cookies import CookieRead, CookieSettings, SameSite
from asgi_sessions.errors import (
    BackendError,
    ConfigurationError,
    InvalidToken,
    SessionGone,
    SessionTooLarge,
)
from asgi_sessions.events import Emitter, EventHook, EventName, SessionEvent, session_hash
from asgi_sessions.policy import EXPIRED, QUIET, Action, ExpiryPolicy, decide, seconds
from asgi_sessions.session import (
    _UNSET,
    Session,
    empty_session,
    loaded_session,
    mark_revoked,
)

__all__ = ["SessionMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNAVAILABLE_BODY = b"Service Unavailable"
_VARY = (b"vary", b"Cookie")
_NO_STORE = (b"cache-control", b"private, no-store")
_NO_COOKIE = CookieRead()


class SessionMiddleware:
    """Puts a :class:`Session` into ``scope["session"]`` for HTTP and WebSocket scopes.

    Use it as ``app.add_middleware(SessionMiddleware, backend=...)`` or
    ``SessionMiddleware(app, backend=...)``; ``backend`` defaults to an in-process
    :class:`MemoryBackend`. Durations are seconds or ``timedelta``.

    On the response (``http.response.start`` or ``websocket.accept``) it deletes,
    saves, touches or leaves the session alone by DESIGN §3: nothing is written on a
    5xx or when the app raises before responding, empty sessions are never stored,
    ``Vary: Cookie`` is added when the session was read and ``Cache-Control:
    private, no-store`` when a Set-Cookie is sent and the app set no Cache-Control.
    Cookies the app sets are never touched.

    A cookie that is malformed, forged, unknown or expired gives an empty session
    and a warning in the ``asgi_sessions`` logger (with a hash, never the token).
    When the store fails, the request gets a generic 503 (``fail_open=False``, the
    default) or runs with an empty session that is not saved (``fail_open=True``).

    ``on_event`` takes one hook or a list (see :mod:`asgi_sessions.events`; the
    ready :func:`~asgi_sessions.events.log_events` writes one JSON line per event).
    They also receive the events only the backend sees (revocations, refresh-token
    reuse) when the backend was not given hooks of its own.

    A WebSocket keeps the session it opened with. When the backend can tell whether
    a session still exists (server-side and hybrid backends), it is checked every
    ``websocket_check_interval`` seconds while the socket is open; once it is gone
    (logout or revoke elsewhere), any access to the socket's session raises
    :class:`SessionRevoked`. ``None`` disables the check.

    ``session_class`` (a :class:`Session` subclass) is what ``scope["session"]``
    holds: the Quart integration uses one that is also Flask's ``SessionMixin``.

    Invalid settings raise :class:`ConfigurationError` here, at start-up.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        backend: SessionBackend | None = None,
        cookie_name: str = "session",
        idle_timeout: int | timedelta = 12 * 3600,
        absolute_timeout: int | timedelta = 7 * 24 * 3600,
        refresh_after: int | timedelta | None = None,
        rotate_after: int | timedelta | None = None,
        path: str = "/",
        domain: str | None = None,
        same_site: SameSite = "lax",
        https_only: bool = True,
        http_only: bool = True,
        partitioned: bool = False,
        max_cookie_chunks: int = 4,
        fail_open: bool = False,
        on_event: EventHook | Sequence[EventHook] | None = None,
        session_class: type[Session] = Session,
        websocket_check_interval: float | None = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if backend is None:
            from asgi_sessions.backends.memory import MemoryBackend

            backend = MemoryBackend()
        elif not isinstance(backend, SessionBackend):
            raise ConfigurationError(
                f"backend must implement SessionBackend (load/save/touch/delete), got "
                f"{type(backend).__name__}"
            )
        idle = seconds(idle_timeout, "idle_timeout")
        self.policy = ExpiryPolicy(
            idle_timeout=idle,
            absolute_timeout=seconds(absolute_timeout, "absolute_timeout"),
            # By default a session is rewritten at most once every tenth of its idle
            # timeout: a busy session is not written on every request, and an idle
            # one loses at most 10% of its idle allowance.
            refresh_after=idle // 10
            if refresh_after is None
            else seconds(refresh_after, "refresh_after"),
            rotate_after=None if rotate_after is None else seconds(rotate_after, "rotate_after"),
        )
        self.cookie = CookieSettings(
            name=cookie_name,
            path=path,
            domain=domain,
            secure=https_only,
            http_only=http_only,
            same_site=same_site,
            partitioned=partitioned,
            max_chunks=max_cookie_chunks,
        )
        self.app = app
        self.backend = backend
        self.fail_open = fail_open
        self.clock = clock
        self._check = backend.serializer.check
        self._cookie_bytes = cookie_name.encode("latin-1")
        self._events = Emitter(on_event)
        if not (isinstance(session_class, type) and issubclass(session_class, Session)):
            raise ConfigurationError("session_class must be asgi_sessions.Session or a subclass")
        self._session_class = session_class
        if websocket_check_interval is not None and not websocket_check_interval > 0:
            raise ConfigurationError("websocket_check_interval must be positive, or None")
        self.websocket_check_interval = websocket_check_interval
        # The events only a backend sees (revocations, refresh-token reuse) go to the
        # same hooks, unless the backend was given its own.
        if self._events and getattr(backend, "events", True) is not True and not backend.events:  # type: ignore[attr-defined]
            backend.events = self._events  # type: ignore[attr-defined]
        # A backend that writes its store before it has the cookie value (hybrid)
        # refuses a write whose value these cookies cannot hold, storing nothing.
        if hasattr(backend, "max_value_size"):
            limit = backend.max_value_size
            fits = self.cookie.max_value_size
            backend.max_value_size = fits if limit is None else min(limit, fits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            name = self._cookie_bytes
            has_cookie = False
            for key, value in scope["headers"]:
                if key == b"cookie" and name in value:
                    has_cookie = True
                    break
            if not has_cookie:
                # The anonymous request, kept lean (DESIGN §6 allows it 20% over the
                # bare app): a new empty session, no clock, no backend, no cookie
                # parsing, and no coroutine of ours unless the app touches the session.
                session = scope["session"] = empty_session(
                    self._check, self.policy, self._session_class
                )

                def send_new(message: Message) -> Awaitable[None]:
                    if session.accessed and message["type"] == "http.response.start":
                        return self._commit_new(message, session, scope, send)
                    if session._replaced:
                        return _done()
                    return send(message)

                await self.app(scope, receive, send_new)
                return
        elif kind != "websocket":
            await self.app(scope, receive, send)
            return
        await self._call(scope, receive, send, kind)

    async def _call(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        # Requests with a session cookie, and WebSockets. A frame of its own keeps
        # __call__ small: Python creates all of a function's closure cells on entry.
        # One pass over the headers finds the session cookie and the user agent.
        name = self._cookie_bytes
        header = agent = None
        several = False
        for key, value in scope["headers"]:
            if key == b"cookie":
                if name in value:
                    several = header is not None
                    header = value
            elif key == b"user-agent":
                agent = value
        if header is None:
            read = _NO_COOKIE
        elif several:
            read = self.cookie.read(scope["headers"])
        else:
            read = self.cookie.read_header(header)
        token = read.value
        # Nothing is due for the stored session at load time (no refresh, rotation or
        # re-issue): unless the app changes it, its response needs no commit at all.
        quiet = False
        if token is None:
            if read.problem is not None:
                logger.warning("session cookie rejected: %s", read.problem)
                if self._events:
                    await self._emit("suspicious", scope, reason=read.problem)
            session = empty_session(self._check, self.policy, self._session_class)
        else:
            now = self.clock()
            client = scope.get("client")
            ip = client[0] if client else None
            user_agent = None if agent is None else agent[:256].decode("latin-1")
            try:
                # The backend directly (no helper coroutine): this is every request
                # with a session.
                record = await self.backend.load(
                    token, now=now, policy=self.policy, ip=ip, user_agent=user_agent
                )
            except InvalidToken as exc:
                record = None
                await self._refused(token, scope, f"rejected: {exc}")
            except BackendError as exc:
                if not self.fail_open:
                    logger.error("session store unavailable, answering 503: %s", exc)
                    await _unavailable(scope, send)
                    return
                logger.warning("session store unavailable, continuing without a session: %s", exc)
                scope["session"] = empty_session(self._check, self.policy, self._session_class)
                await self.app(scope, receive, _discard_session(scope, send))
                return
            else:
                if record is None:
                    await self._refused(token, scope, None)
            status = QUIET
            if record is not None:
                status = self.policy.status(record, now)
                if status == EXPIRED:
                    logger.info("session %s expired", fingerprint(token))
                    if self._events:
                        await self._emit("expired", scope, record=record)
                    record = None
            if record is None:
                token = None
                session = empty_session(self._check, self.policy, self._session_class)
            else:
                session = loaded_session(
                    self._session_class, record.data, record, self._check, self.policy, now
                )
                quiet = status == QUIET and not (record.refreshed or record.reissue)
        scope["session"] = session
        if quiet and kind == "http":
            # The common read: an object with slots instead of two closures and
            # their cells; it commits only if the app changes the session.
            await self.app(
                scope, receive, _QuietSend(self, session, token, read.names, scope, send)
            )
            return
        await self._serve(scope, receive, send, kind, session, token, read.names, quiet)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        kind: str,
        session: Session,
        token: str | None,
        names: tuple[str, ...],
        quiet: bool,
    ) -> None:
        start_type = "http.response.start" if kind == "http" else "websocket.accept"

        async def commit_then_send(message: Message) -> None:
            nonlocal token
            token = await self._guarded_commit(message, session, token, names, scope, send)
            if not session._replaced:
                await send(message)

        # A plain function returning the awaitable: messages that need no commit go
        # straight to the server's send without a coroutine of ours around them.
        def send_wrapper(message: Message) -> Awaitable[None]:
            if session._replaced:
                return _done()
            msg_type = message["type"]
            # A session that was never touched and has no stored record has nothing
            # to commit: the common anonymous request costs one attribute check.
            if (msg_type == start_type or msg_type == "websocket.http.response.start") and (
                session.accessed or token is not None
            ):
                if quiet and not (session.modified or session._invalidated or session._rotate):
                    # A read or an untouched request: no coroutine, clock or backend.
                    if session.accessed:
                        _add_vary(message)
                    return send(message)
                return commit_then_send(message)
            return send(message)

        if kind == "http":
            await self.app(scope, receive, send_wrapper)
            return

        disconnected = False

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "websocket.disconnect":
                disconnected = True
            return message

        watcher = None
        record = session._record
        exists = getattr(self.backend, "exists", None)
        if record is not None and self.websocket_check_interval and exists is not None:
            watcher = asyncio.ensure_future(
                self._watch(session, exists, self.websocket_check_interval)
            )
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            # Frameworks end a socket that the client closed by raising from
            # receive() (Starlette's WebSocketDisconnect): a normal end, not a failure.
            if disconnected and not session._replaced:
                await self._commit_after_socket(session, token, scope)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if not session._replaced:
            await self._commit_after_socket(session, token, scope)

    async def _watch(
        self,
        session: Session,
        exists: Callable[[str], Awaitable[bool]],
        interval: float,
    ) -> None:
        """While a WebSocket is open, check now and then that its session still
        exists; once it does not, every access to the session raises
        :class:`SessionRevoked` (the socket must not act on stale data). The session
        checked is the one the socket holds now: a rotation at accept moves it to a
        new ID, and a socket opened on a grace alias holds the session it leads to."""
        while True:
            await asyncio.sleep(interval)
            record = session._record
            if record is None:
                return  # ended by the socket itself (an invalidate at accept)
            session_id = record.session_id
            if record.read_only:
                session_id = record.extra.get("alias_of") or session_id
            try:
                alive = await exists(session_id)
            except BackendError as exc:
                logger.warning("could not check a WebSocket's session: %s", exc)
                continue
            if not alive:
                logger.info("session %s ended while its WebSocket was open", session_id[:12])
                mark_revoked(session)
                return

    async def _commit_new(
        self, message: Message, session: Session, scope: Scope, send: Send
    ) -> None:
        await self._guarded_commit(message, session, None, (), scope, send)
        if not session._replaced:
            await send(message)

    async def _guarded_commit(
        self,
        message: Message,
        session: Session,
        token: str | None,
        seen: tuple[str, ...],
        scope: Scope,
        send: Send,
    ) -> str | None:
        """:meth:`_commit` under the store-failure policy. Returns the token in force;
        when a 503 was sent in place of ``message``, marks the session replaced so the
        app's further messages are dropped."""
        try:
            return await self._commit(message, session, token, seen, scope)
        except BackendError as exc:
            if not self.fail_open:
                logger.error("session store failed on commit, answering 503: %s", exc)
                await _unavailable(scope, send)
                session._replaced = True
                return token
            logger.warning("session store failed on commit, session not saved: %s", exc)
            return token

    async def _refused(self, token: str, scope: Scope, reason: str | None) -> None:
        """Log (and report) a cookie value the backend refused (``reason``) or did
        not know (``None``: unknown or expired)."""
        if reason is not None:
            logger.warning("session token %s %s", fingerprint(token), reason)
        else:
            logger.info("session token %s is unknown or expired", fingerprint(token))
            reason = "unknown or expired session"
        if self._events:
            await self._emit("suspicious", scope, session=fingerprint(token), reason=reason)

    async def _emit(
        self,
        name: EventName,
        scope: Scope,
        *,
        record: SessionRecord | None = None,
        session: str | None = None,
        **details: Any,
    ) -> None:
        ip, user_agent = _client(scope)
        if record is not None:
            session = session_hash(record.session_id)
            details.setdefault("user_id", record.user_id)
        await self._events.emit(
            SessionEvent(name, session=session, ip=ip, user_agent=user_agent, **details)
        )

    async def _commit(
        self,
        message: Message,
        session: Session,
        token: str | None,
        seen: tuple[str, ...],
        scope: Scope,
    ) -> str | None:
        """Apply the commit rules at the start of the response; returns the token in
        force afterwards (``None`` when there is no stored session)."""
        if session.accessed:
            _add_vary(message)
        headers = _headers(message)

        record = session._record
        now = self.clock()
        rotate = session._rotate
        refresh = False
        if record is not None:
            rotate = rotate or self.policy.rotation_due(record, now)
            # reissue: the backend wants a fresh cookie value (a JWT under a retired key).
            refresh = record.reissue or self.policy.refresh_due(record, now)
        action = decide(
            stored=record is not None,
            empty=session._empty,
            modified=session.modified,
            invalidated=session._invalidated,
            rotate=rotate,
            refresh=refresh,
            failed=message.get("status", 200) >= 500,
        )
        if action is Action.NOTHING:
            if record is not None and record.refreshed and token is not None:
                # The load already extended the expiry; slide the cookie's Max-Age.
                record.refreshed = False
                if self._events:
                    await self._emit("refreshed", scope, record=record)
                if not record.browser_session:
                    self._set_cookies(
                        headers,
                        self.cookie.render(token, self.policy.cookie_max_age(record, now), seen),
                    )
            return token
        if record is not None and record.read_only and action is not Action.DELETE:
            # A request on the grace alias of a rotated session: the browser already
            # holds the new cookie, and a write here could fork a second session.
            if session.modified:
                logger.warning(
                    "session %s: changes made on a rotated session's grace alias are discarded",
                    fingerprint(token or ""),
                )
            return token
        before = None if record is None else record.session_id
        before_user = None if record is None else record.user_id
        # A set_expiry() of this request: a cookie that becomes a browser-session one
        # keeps its value, and must still reach the browser without its Max-Age.
        expiry_set = session._expiry is not None
        try:
            value, ttl = await self._apply(action, session, token, now, scope, rotate=rotate)
            if self._events:
                await self._emit_commit(
                    action, session, token, before, before_user, scope, rotate=rotate
                )
        except SessionGone:
            if token is not None and await is_grace_alias(self.backend, token, now=now):
                # A parallel request of this browser rotated the session first (a login
                # submitted twice, a write in flight during a login): the browser has or
                # gets the winner's cookie, so this response leaves it alone, as one on
                # the grace alias does. Expiring it here would log the browser out.
                logger.info(
                    "session %s was rotated by a parallel request; this one's changes are "
                    "discarded",
                    fingerprint(token),
                )
                return token
            logger.info(
                "session %s was ended during the request; not re-created", fingerprint(token or "")
            )
            value, ttl = None, 0
        except BackendError as exc:
            if action is not Action.TOUCH:
                raise
            # A refresh only extends the expiry of a session that was read and not
            # changed: the response goes out as it is, and a later request refreshes.
            logger.warning(
                "session %s: refresh failed, expiry not extended: %s", fingerprint(token or ""), exc
            )
            return token
        except SessionTooLarge as exc:
            if action is not Action.TOUCH:
                raise
            # A hybrid access token over 64 KiB: the re-issue cannot be made at all.
            assert token is not None
            assert record is not None
            await self._end_unissuable(token, record, headers, seen, exc)
            return None
        stored = session._record
        if value is None or stored is None:
            self._set_cookies(headers, self.cookie.render_delete(seen))
        elif value != token or not stored.browser_session or expiry_set:
            # An unchanged token is re-sent too, so the browser's Max-Age slides.
            # What policy.cookie_max_age(stored, now) gives, computed once by _apply.
            max_age = None if stored.browser_session else ttl
            try:
                cookies = self.cookie.render(value, max_age, seen)
            except ValueError as exc:
                if action is not Action.TOUCH:
                    raise SessionTooLarge(f"the session does not fit in cookies: {exc}") from None
                await self._end_unissuable(value, stored, headers, seen, exc)
                return None
            self._set_cookies(headers, cookies)
        return value

    async def _end_unissuable(
        self,
        token: str,
        record: SessionRecord,
        headers: list[tuple[bytes, bytes]],
        seen: tuple[str, ...],
        exc: Exception,
    ) -> None:
        """A re-issue the app did not ask for (a refreshed hybrid access token, a JWT
        under the newest key) cannot be made, or no longer fits the cookies: the
        session cannot go on, so it ends, and the request that changed nothing is
        answered as the app wrote it."""
        logger.warning(
            "session %s: its re-issued cookie cannot be sent (%s); ended", fingerprint(token), exc
        )
        await self.backend.delete(token, record)
        self._set_cookies(headers, self.cookie.render_delete(seen))

    async def _emit_commit(
        self,
        action: Action,
        session: Session,
        token: str | None,
        before: str | None,
        before_user: str | None,
        scope: Scope,
        *,
        rotate: bool,
    ) -> None:
        record = session._record
        if action is Action.DELETE:
            await self._emit(
                "invalidated", scope, session=session_hash(before), user_id=before_user
            )
        elif record is None:
            return
        elif action is Action.TOUCH:
            await self._emit("refreshed", scope, record=record)
        elif token is None:
            await self._emit("created", scope, record=record)
        elif rotate:
            await self._emit("rotated", scope, record=record, previous=session_hash(before))

    async def _apply(
        self,
        action: Action,
        session: Session,
        token: str | None,
        now: float,
        scope: Scope,
        *,
        rotate: bool,
    ) -> tuple[str | None, int]:
        """Carry out ``action`` on the backend; returns the cookie value now in
        force (``None`` after a delete) and the stored record's TTL in seconds (0
        after a delete). Resets the session's change tracking so a WebSocket can
        commit again when it closes."""
        record = session._record
        if action is Action.DELETE:
            assert record is not None
            assert token is not None
            await self.backend.delete(token, record)
            session._record = None
            return None, 0
        if record is None:
            record = SessionRecord(
                session_id="", data={}, created_at=now, last_seen=now, rotated_at=now
            )
        if session._expiry is not None:
            record.idle_timeout, record.fixed_expiry, record.browser_session = session._expiry
        if session._user is not _UNSET:
            record.user_id = session._user
        record.last_seen = now
        record.ip, record.user_agent = _client(scope)
        record.absolute_expiry = self.policy.absolute_deadline(record)
        if record.fixed_expiry is not None:
            record.absolute_expiry = min(record.absolute_expiry, record.fixed_expiry)
        record.sliding = self.policy.sliding(record)
        ttl = self.policy.ttl(record, now)
        if action is Action.SAVE:
            record.data = dict(dict.items(session))
            rotate = rotate and token is not None
            if rotate:
                record.rotated_at = now
            delta = _delta(session, replace=token is None)
            value = await self.backend.save(token, record, delta, now=now, ttl=ttl, rotate=rotate)
        else:
            assert token is not None
            touched = await self.backend.touch(token, record, now=now, ttl=ttl)
            value = token if touched is None else touched
        record.reissue = False
        session._record = record
        session.modified = session._replace = session._rotate = False
        session._changed = frozenset()
        session._expiry = None
        session._user = _UNSET
        return value, ttl

    async def _commit_after_socket(self, session: Session, token: str | None, scope: Scope) -> None:
        """Persist what a WebSocket changed after it was accepted. No cookie can be
        sent any more, so only changes that keep the cookie value are stored."""
        if token is None or session._record is None or session._record.read_only:
            if session.modified:
                logger.warning("session changes made during a WebSocket were not stored")
            return
        action = decide(
            stored=True,
            empty=session._empty,
            modified=session.modified,
            invalidated=session._invalidated,
            rotate=False,
            refresh=False,
            failed=False,
        )
        if action is Action.NOTHING:
            return
        if session._rotate:
            logger.warning("rotate() during a WebSocket is ignored: the new cookie cannot be sent")
        # Nor a re-issue the backend asked for at load (a hybrid refresh would rotate
        # the token that the browser keeps using).
        session._record.reissue = False
        try:
            value, _ = await self._apply(action, session, token, self.clock(), scope, rotate=False)
        except SessionGone:
            logger.info("session %s ended while its WebSocket was open", fingerprint(token))
            return
        except BackendError as exc:
            # Nothing can be sent once the socket is closed, and fail_open or not the
            # outcome is the same: the changes are lost, which the log says.
            logger.warning(
                "session %s: the store failed after its WebSocket closed; the changes "
                "made during the socket were not stored: %s",
                fingerprint(token),
                exc,
            )
            return
        if value is not None and value != token:
            logger.warning(
                "session changes made during a WebSocket need a new cookie, which cannot be "
                "sent on an open socket; they last only as long as the old cookie is used"
            )

    def _set_cookies(self, headers: list[tuple[bytes, bytes]], values: list[bytes]) -> None:
        has_cache_control = False
        for key, value in headers:
            if key.lower() == b"set-cookie" and self.cookie.owns(value):
                # The app manages this cookie itself on this response; it wins.
                logger.warning(
                    "the app set the session cookie %r itself; leaving its Set-Cookie alone",
                    self.cookie.name,
                )
                return
            if key.lower() == b"cache-control":
                has_cache_control = True
        headers.extend((b"set-cookie", v) for v in values)
        if not has_cache_control:
            headers.append(_NO_STORE)


class _QuietSend:
    """The send wrapper of a request whose stored session needs nothing at load time
    (no refresh, rotation or re-issue due): it adds ``Vary: Cookie`` when the session
    was read, and commits only when the app changed, rotated or invalidated it."""

    __slots__ = ("middleware", "names", "scope", "send", "session", "token")

    def __init__(
        self,
        middleware: SessionMiddleware,
        session: Session,
        token: str | None,
        names: tuple[str, ...],
        scope: Scope,
        send: Send,
    ) -> None:
        self.middleware = middleware
        self.session = session
        self.token = token
        self.names = names
        self.scope = scope
        self.send = send

    def __call__(self, message: Message) -> Awaitable[None]:
        session = self.session
        if session._replaced:
            return _done()
        if message["type"] == "http.response.start":
            if session.modified or session._invalidated or session._rotate:
                return self._commit_then_send(message)
            if session.accessed:
                _add_vary(message)
        return self.send(message)

    async def _commit_then_send(self, message: Message) -> None:
        session = self.session
        self.token = await self.middleware._guarded_commit(
            message, session, self.token, self.names, self.scope, self.send
        )
        if not session._replaced:
            await self.send(message)


def _client(scope: Scope) -> tuple[str | None, str | None]:
    """The client's address and user agent, for the per-user device list."""
    client = scope.get("client")
    ip = client[0] if client else None
    user_agent = None
    for key, value in scope["headers"]:
        if key == b"user-agent":
            user_agent = value[:256].decode("latin-1")
            break
    return ip, user_agent


def _headers(message: Message) -> list[tuple[bytes, bytes]]:
    """The response's header list, made a mutable list in place."""
    headers = message.get("headers")
    if headers is None:
        headers = message["headers"] = []
    elif not isinstance(headers, list):
        headers = message["headers"] = list(headers)
    return headers


def _add_vary(message: Message) -> None:
    # _headers() inlined, and names compared as sent before lowering: this runs on
    # every response that read the session.
    headers = message.get("headers")
    if type(headers) is not list:
        headers = message["headers"] = [] if headers is None else list(headers)
    for key, value in headers:
        if (key == b"vary" or key.lower() == b"vary") and _names_cookie(value):
            return
    headers.append(_VARY)


def _names_cookie(vary: bytes) -> bool:
    tokens = {t.strip().lower() for t in vary.split(b",")}
    return b"cookie" in tokens or b"*" in tokens


def _delta(session: Session, *, replace: bool) -> Delta:
    if replace or session._replace:
        return Delta(updates=dict(dict.items(session)), replace=True)
    updates = {}
    removed = set()
    for key in session._changed:
        if dict.__contains__(session, key):
            updates[key] = dict.__getitem__(session, key)
        else:
            removed.add(key)
    return Delta(updates=updates, removed=frozenset(removed))


async def _done() -> None:
    """An awaitable that does nothing: messages after a replaced response."""


async def _unavailable(scope: Scope, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1011})
        return
    await respond(
        send, 503, _UNAVAILABLE_BODY, b"text/plain; charset=utf-8", (b"retry-after", b"1")
    )


def _discard_session(scope: Scope, send: Send) -> Send:
    async def wrapper(message: Message) -> None:
        if message["type"] == "http.response.start":
            session = scope.get("session")
            if isinstance(session, Session) and session.modified:
                logger.warning("session store unavailable (fail-open): session changes not saved")
        await send(message)

    return wrapper
