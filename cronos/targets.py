"""Parsing of targets and ports from the command line (one clear error each)."""

from __future__ import annotations

import ipaddress
import socket

from .errors import UsageError

MAX_PORTS = 1024


def parse_ports(spec: str) -> list[int]:
    """``80,1234,8000-8010`` -> sorted unique ports; 1..65535 only."""
    ports: set[int] = set()
    if not spec or not spec.strip():
        raise UsageError("empty port list")
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise UsageError(
                f"bad port {part!r}: expected a number or a range like 8000-8010"
            ) from None
        for p in (a, b):
            if not 1 <= p <= 65535:
                raise UsageError(f"port {p} out of range 1-65535")
        if b < a:
            raise UsageError(f"bad port range {part!r}")
        ports.update(range(a, b + 1))
        if len(ports) > MAX_PORTS:
            raise UsageError(f"more than {MAX_PORTS} ports")
    return sorted(ports)


def resolve(target: str) -> str:
    """An IPv4 address for a literal or a host name."""
    target = target.strip()
    if not target:
        raise UsageError("empty target")
    try:
        addr = ipaddress.ip_address(target)
    except ValueError:
        addr = None
    if addr is not None:
        if addr.version != 4:
            raise UsageError(f"{target}: IPv6 targets are not supported yet")
        return str(addr)
    if "/" in target:
        raise UsageError(f"{target}: CIDR ranges are not supported yet; list addresses")
    try:
        infos = socket.getaddrinfo(target, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot resolve {target!r}: {reason}") from None
    return infos[0][4][0]


def resolve_all(targets: list[str]) -> list[str]:
    if not targets:
        raise UsageError("no target given")
    out: list[str] = []
    for t in targets:
        ip = resolve(t)
        if ip not in out:
            out.append(ip)
    return out


def parse_methods(spec: str) -> list[str]:
    spec = spec.strip().lower()
    if not spec or set(spec) - set("slf"):
        raise UsageError(
            f"bad method {spec!r}: use letters s (SYN_RCVD), l (LAST_ACK), f (FIN_WAIT1)"
        )
    return [m for m in "slf" if m in spec]
