"""Machine-readable outputs written as results arrive (nothing measured is lost)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from .errors import UsageError


class JsonLinesWriter:
    """One JSON object per line, flushed and fsync'ed as each record is written."""

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

    def write(self, record: dict) -> None:
        assert self._fh is not None
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()
        if self.path != "-":
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None and self.path != "-":
            self._fh.close()
        self._fh = None
