"""Reading a user's text file: refuse binary and non-UTF-8 content.

One reader for the database, ``classify`` inputs and ``-iL`` /
``--exclude-file`` lists; each caller words the error in its own terms
(``file:line:`` for the database).
"""

from __future__ import annotations

from pathlib import Path


class NotText(ValueError):
    """The file holds a NUL byte (``binary``) or is not UTF-8 (``line`` of the fault)."""

    def __init__(self, binary: bool, line: int):
        super().__init__("binary content" if binary else "not UTF-8 text")
        self.binary = binary
        self.line = line


def read_text(path: str | Path, limit: int | None = None) -> str:
    """The file's text; ``OSError`` as raised, ``NotText`` for binary or non-UTF-8."""
    with open(path, "rb") as fh:
        raw = fh.read() if limit is None else fh.read(limit)
    if b"\0" in raw:
        raise NotText(True, raw[: raw.index(b"\0")].count(b"\n") + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotText(False, raw[: exc.start].count(b"\n") + 1) from None
