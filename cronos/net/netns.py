"""Enter a named network namespace (``ip netns`` style) for this process."""

from __future__ import annotations

import ctypes
import os
import re

from ..errors import NetError, PrivilegeError

CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def enter(name: str) -> None:
    """Move the calling thread (call before starting threads) into netns ``name``."""
    if not _NAME.match(name):
        raise NetError(f"bad network namespace name {name!r}")
    path = f"/run/netns/{name}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NetError(f"no such network namespace: {name}") from None
    except PermissionError:
        raise PrivilegeError("entering a network namespace needs root") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetError(f"setns({name}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)
