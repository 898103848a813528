"""Figures that tests measure and report (requests, cancellations, lost updates,
leaks...): each test adds its lines here and the run prints them all at the end,
whatever pytest's output capturing, so a reviewer sees them in CI's log."""

from __future__ import annotations

FIGURES: list[str] = []


def report(test: str, **figures: object) -> None:
    """Record one line of figures for ``test``: ``name=value`` pairs, in order."""
    FIGURES.append(f"{test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
