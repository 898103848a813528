"""``asgi-sessions`` (or ``python -m asgi_sessions``): operate on sessions in Redis.

Every command takes ``--redis URL`` (default: ``$ASGI_SESSIONS_REDIS_URL``, then
``$REDIS_URL``) and ``--prefix`` (the ``RedisBackend`` key prefix, default
``asgi_sessions:``). Session IDs are the public handles the library shows (never
usable as cookies); no command prints a token.

Exit status: 0 on success, 1 when the thing asked for does not exist, 2 for a
usage error, a bad URL or an unreachable server (one line on stderr says which).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["amain", "main"]

_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class _Fail(Exception):
    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asgi-sessions",
        description="List, inspect, count and revoke asgi-sessions sessions stored in Redis.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get("ASGI_SESSIONS_REDIS_URL") or os.environ.get("REDIS_URL"),
        help="Redis URL (default: $ASGI_SESSIONS_REDIS_URL, then $REDIS_URL)",
    )
    common.add_argument(
        "--prefix", default="asgi_sessions:", help="RedisBackend key prefix (asgi_sessions:)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("list", parents=[common], help="list a user's live sessions")
    p.add_argument("user", help="the user ID the sessions are bound to")
    p = commands.add_parser("revoke", parents=[common], help="end one session")
    p.add_argument("session_id", help="the session's public ID (from list or inspect)")
    p = commands.add_parser("revoke-user", parents=[common], help="end all of a user's sessions")
    p.add_argument("user")
    p.add_argument("--keep", metavar="SESSION_ID", help="leave this one session alive")
    p = commands.add_parser(
        "revoke-all", parents=[common], help="end every session under the prefix (all users)"
    )
    p.add_argument("--yes", action="store_true", help="confirm: every user is logged out")
    p = commands.add_parser(
        "inspect",
        parents=[common],
        help="show what a cookie value holds (a JWT's claims, unverified; a server-side "
        "session looked up by the hash of its token)",
    )
    p.add_argument(
        "cookie",
        help="the cookie's value (use - to read it from stdin; put -- before a value "
        "that starts with -)",
    )
    commands.add_parser("count", parents=[common], help="count live sessions and grace aliases")
    commands.add_parser(
        "prune", parents=[common], help="drop per-user index entries whose session is gone"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run one command, return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130


async def amain(argv: Sequence[str] | None = None) -> int:
    """:func:`main` for a caller already inside an event loop."""
    return await _main(_parser().parse_args(argv))


async def _main(args: argparse.Namespace) -> int:
    try:
        output = await _run(args)
    except _Fail as failure:
        print(f"asgi-sessions: {failure}", file=sys.stderr)
        return failure.status
    if output:
        print(output)
    return 0


async def _run(args: argparse.Namespace) -> str:
    if args.command == "inspect" and args.cookie == "-":
        args.cookie = sys.stdin.readline().strip()
    if args.command == "inspect" and _JWT.fullmatch(args.cookie) and args.redis is None:
        return _show(args, {"jwt": _claims(args.cookie)})
    if not args.redis:
        raise _Fail("no Redis URL: pass --redis URL or set ASGI_SESSIONS_REDIS_URL")
    from asgi_sessions.backends.redis import RedisBackend
    from asgi_sessions.errors import BackendError, ConfigurationError

    try:
        backend = RedisBackend(args.redis, prefix=args.prefix, operation_timeout=5.0)
    except ConfigurationError as exc:
        raise _Fail(str(exc)) from None
    from redis.exceptions import RedisError

    try:
        await backend._run(backend.client.ping())  # fail fast, with one clear line
        return await _command(args, backend)
    except (BackendError, RedisError) as exc:
        raise _Fail(f"Redis at {_safe_url(args.redis)} is unreachable or failing: {exc}") from None
    finally:
        await backend.aclose()


def _safe_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


async def _command(args: argparse.Namespace, backend: Any) -> str:
    if args.command == "list":
        sessions = await backend.list_sessions(args.user)
        rows = [
            {
                "id": info.session_id,
                "created": _when(info.created_at),
                "last_seen": _when(info.last_seen),
                "expires": _when(info.expires_at),
                "ip": info.ip,
                "user_agent": info.user_agent,
            }
            for info in sessions
        ]
        if not rows and not args.json:
            return f"no live sessions for user {args.user!r}"
        return _show(args, rows)
    if args.command == "revoke":
        if not await backend.revoke(args.session_id):
            raise _Fail(f"no live session {args.session_id}", status=1)
        return _show(args, {"revoked": 1})
    if args.command == "revoke-user":
        return _show(args, {"revoked": await backend.revoke_user(args.user, keep=args.keep)})
    if args.command == "revoke-all":
        if not args.yes:
            raise _Fail("revoke-all logs every user out; run it again with --yes to confirm")
        return _show(args, {"revoked": await backend.revoke_all()})
    if args.command == "inspect":
        return _show(args, await _inspect(backend, args.cookie))
    if args.command == "count":
        return _show(args, await _count(backend))
    if args.command == "prune":
        return _show(args, {"pruned": await _prune(backend)})
    raise _Fail(f"unknown command {args.command}")  # pragma: no cover - argparse refuses


def _show(args: argparse.Namespace, value: Any) -> str:
    if args.json:
        return json.dumps(value, indent=2, sort_keys=True)
    if isinstance(value, list):
        if not value:
            return ""
        keys = list(value[0])
        widths = [max(len(k), *(len(str(row[k])) for row in value)) for k in keys]
        lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
        lines += [
            "  ".join(str(row[k]).ljust(w) for k, w in zip(keys, widths, strict=True))
            for row in value
        ]
        return "\n".join(lines)
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _claims(token: str) -> dict[str, Any]:
    """A JWT's header and claims, decoded without checking the signature (this is
    a debugging aid: nothing here says the token is genuine)."""
    try:
        head, body, _ = token.split(".")
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Fail(f"not a decodable JWT: {exc}", status=1) from None
    if not isinstance(claims, dict):
        raise _Fail("the JWT's payload is not an object", status=1)
    for name in ("iat", "exp", "crt", "rot", "nbf"):
        if isinstance(claims.get(name), int | float):
            claims[f"{name} (UTC)"] = _when(claims[name])
    return {"verified": False, "header": header, "claims": claims}


async def _inspect(backend: Any, cookie: str) -> dict[str, Any]:
    from asgi_sessions.backends._tokens import TOKEN_LENGTH, token_id

    result: dict[str, Any] = {}
    refresh = cookie
    if _JWT.fullmatch(cookie):
        return {"jwt": _claims(cookie)}
    access, dot, tail = cookie.rpartition(".")
    if dot and _JWT.fullmatch(access):  # a HybridBackend pair: access JWT . refresh token
        result["access_token"] = _claims(access)
        refresh = tail
    if len(refresh) != TOKEN_LENGTH:
        raise _Fail("neither a JWT nor a server-side session token of this library", 1)
    session_id = token_id(refresh)
    (state,) = await backend._states([session_id])
    if state is None:
        raise _Fail(f"no session {session_id} in Redis (unknown, expired or revoked)", 1)
    ttl = await backend._run(backend.client.pttl(backend._key(session_id)))
    result["session"] = {
        "id": session_id,
        "user": state.user_id,
        "created": _when(state.created_at),
        "last_seen": _when(state.last_seen),
        "ip": state.ip,
        "user_agent": state.user_agent,
        "expires_in_seconds": None if ttl < 0 else round(ttl / 1000),
        "grace_alias_of": state.alias_of,
    }
    return result


async def _count(backend: Any) -> dict[str, int]:
    live = aliases = 0
    pattern = f"{backend.prefix}s:*"
    start = len(backend.prefix) + 2
    ids = [
        key.decode()[start:] async for key in backend.client.scan_iter(match=pattern, count=1000)
    ]
    for first in range(0, len(ids), 500):
        for state in await backend._states(ids[first : first + 500]):
            if state is None:
                continue
            if state.alias_of is None:
                live += 1
            else:
                aliases += 1
    return {"live_sessions": live, "grace_aliases": aliases}


async def _prune(backend: Any) -> int:
    pruned = 0
    prefix = f"{backend.prefix}u:"
    async for key in backend.client.scan_iter(match=prefix + "*", count=1000):
        members = [m.decode() for m in await backend._run(backend.client.zrange(key, 0, -1))]
        if not members:
            continue
        states = await backend._states(members)
        dead = [m for m, state in zip(members, states, strict=True) if state is None]
        if dead:
            await backend._run(backend.client.zrem(key, *dead))
            pruned += len(dead)
    return pruned
