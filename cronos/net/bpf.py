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


#: ICMPv6 errors (destination unreachable, packet too big, time exceeded,
#: parameter problem: types 1-4) that may quote one of our segments
ICMP6_ERRORS = "(icmp6 and ip6[40] >= 1 and ip6[40] <= 4)"


def flows_filter(targets: list[str], max_hosts: int = 64) -> str:
    """Filter for TCP to/from the probed hosts (both directions: our sends
    too), and the ICMPv6 errors sent to us when any target is IPv6. No
    targets known: every TCP segment of either family. (A TCP segment behind
    IPv6 extension headers does not pass: pcap's ``tcp`` reads the fixed
    header's next-header field.)"""
    addrs = sorted({t.partition("%")[0] for t in targets})
    has6 = not addrs or any(":" in a for a in addrs)
    has4 = not addrs or any(":" not in a for a in addrs)
    fam = "(ip or ip6)" if has4 and has6 else "ip6" if has6 else "ip"
    icmp = f" or {ICMP6_ERRORS}" if has6 else ""
    if not addrs or len(addrs) > max_hosts:
        return f"({fam} and tcp){icmp}" if icmp else f"{fam} and tcp"
    hosts = " or ".join(f"host {a}" for a in addrs)
    if not icmp:
        return f"{fam} and tcp and ({hosts})"
    return f"({fam} and tcp and ({hosts})){icmp}"  # an error may come from any router
