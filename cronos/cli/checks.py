"""Option checks every command shares: made before any work starts."""

from __future__ import annotations

import os

from ..errors import UsageError


def positive_seconds(flag: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise UsageError(f"{flag} must be > 0 seconds (got {value:g})")


def output_dir(flag: str, path: str | None) -> None:
    """The file ``path`` can be created: its directory exists."""
    if path and path != "-" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UsageError(f"{flag} {path}: directory does not exist")


def keep_resident(db) -> None:
    """``db`` compiled and set apart from garbage collection: it lives as long
    as the process, and a full collection that walks its objects pauses one
    match by about 20 ms (``match.prepare``)."""
    import gc

    from ..analysis.match import prepare

    prepare(db)
    gc.freeze()
