"""Machine-readable outputs written as results arrive (nothing measured is lost)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO

from ..errors import UsageError


def json_line(record: dict) -> str:
    """One record as written to a JSON Lines file (compact, no newline)."""
    return json.dumps(record, separators=(",", ":"))


class JsonLinesWriter:
    """One JSON object per line, written to the kernel as each record arrives.

    Every record is flushed at once (a killed process loses nothing: the data
    is in the kernel). ``sync()`` asks for an fsync, for power loss; it is
    coalesced to at most one every ``SYNC_EVERY_S`` (20,000 fsyncs cost a
    10,000-host scan more than its probes), and ``close()`` always syncs.
    """

    SYNC_EVERY_S = 0.5

    def __init__(self, path: str):
        self.path = path
        self._fh: IO[str] | None = None
        if path == "-":
            import sys

            self._fh = sys.stdout
            return
        try:
            parent = Path(path).resolve().parent
            if not parent.is_dir():
                raise UsageError(f"-oJ {path}: directory {parent} does not exist")
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if self._fh.tell() > 0:
                with open(path, "rb") as old:
                    old.seek(-1, os.SEEK_END)
                    if old.read(1) != b"\n":  # a record cut by a crash: keep it on its own line
                        self._fh.write("\n")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None

    _last_sync = 0.0

    def write(self, record: dict) -> None:
        self.write_line(json_line(record))

    def write_line(self, line: str) -> None:
        """A record already serialised by ``json_line``."""
        assert self._fh is not None
        self._fh.write(line + "\n")
        self._fh.flush()

    def sync(self, force: bool = False) -> None:
        """fsync (at a host's completion), at most every SYNC_EVERY_S unless forced."""
        if self._fh is None or self.path == "-":
            return
        now = time.monotonic()
        if force or now - self._last_sync >= self.SYNC_EVERY_S:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def close(self) -> None:
        if self._fh is not None and self.path != "-":
            self.sync(force=True)
            self._fh.close()
        self._fh = None
