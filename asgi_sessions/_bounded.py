"""Room in the package's bounded caches: plain dicts, oldest entry first."""

from __future__ import annotations

import itertools
from typing import Any


def make_room(cache: dict[Any, Any], limit: int) -> None:
    """Drop the oldest eighth of ``cache`` (at least one entry) once it holds
    ``limit`` entries. One pass for many entries: deleting the first entry one at
    a time makes each ``next(iter(cache))`` walk over the holes that the earlier
    deletions left at the front of the dict (about 5 µs a call at 10,000 entries)."""
    if len(cache) >= limit:
        for key in list(itertools.islice(cache, max(1, limit // 8))):
            del cache[key]
