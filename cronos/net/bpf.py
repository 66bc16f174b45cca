"""Classic BPF filters for the capture socket, compiled by tcpdump.

The capture socket is ``AF_PACKET``/``SOCK_DGRAM``: the filter sees the packet
from its IP header, hence link type RAW. Expressions are pcap syntax, as the
talk printed them (``src host X and src port P and dst port Q``).
"""

from __future__ import annotations

import ctypes
import shutil
import socket
import subprocess

from ..errors import DependencyError, NetError

SO_ATTACH_FILTER = 26


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def compile_filter(expr: str) -> list[tuple[int, int, int, int]]:
    """Compile a pcap expression for raw IP packets into BPF instructions."""
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    try:
        out = subprocess.run(
            [tcpdump, "-ddd", "-y", "RAW", expr],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except FileNotFoundError as exc:
        raise DependencyError(
            "tcpdump is needed to compile capture filters (apt install tcpdump)"
        ) from exc
    if out.returncode != 0:
        msg = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise NetError(f"cannot compile capture filter {expr!r}: {msg}")
    lines = out.stdout.split("\n")
    n = int(lines[0])
    prog = [tuple(int(x) for x in line.split()) for line in lines[1 : n + 1]]
    return prog  # type: ignore[return-value]


def attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    arr = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    raw = ctypes.string_at(ctypes.addressof(fprog), ctypes.sizeof(fprog))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, raw)  # the kernel copies `arr`


def flows_filter(targets: list[str], max_hosts: int = 64) -> str:
    """Filter for TCP to/from the probed hosts (both directions: our sends too)."""
    if not targets or len(targets) > max_hosts:
        return "ip and tcp"
    hosts = " or ".join(f"host {t}" for t in sorted(set(targets)))
    return f"ip and tcp and ({hosts})"
