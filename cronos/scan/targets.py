"""Parsing of targets and ports from the command line (one clear error each)."""

from __future__ import annotations

import ipaddress
import socket

from ..errors import UsageError
from ..textfile import NotText, read_text

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


# --- many targets: CIDR ranges, -iL files, exclusions, safe defaults ----------

_SPECIAL = [
    ipaddress.ip_network(n)
    for n in ("255.255.255.255/32", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")
]
_SPECIAL_WHY = {
    "0.0.0.0/8": "'this network'",
    "224.0.0.0/4": "multicast",
    "240.0.0.0/4": "reserved",
    "255.255.255.255/32": "broadcast",
}


def special_reason(addr: ipaddress.IPv4Address) -> str | None:
    for net in _SPECIAL:
        if addr in net:
            return _SPECIAL_WHY[str(net)]
    return None


def read_list_file(path: str, what: str) -> list[str]:
    """Non-empty, non-comment lines of a -iL / --exclude-file file."""
    try:
        text = read_text(path, limit=16 << 20)
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    except NotText as exc:
        if exc.binary:
            raise UsageError(f"{what} {path}: binary file, expected one target per line") from None
        raise UsageError(f"{what} {path}: not UTF-8 text") from None
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line) > 255 or " " in line:
            raise UsageError(f"{what} {path}:{n}: bad entry {line[:40]!r}")
        items.append(line)
    return items


class TargetSet:
    """The scan's targets, expanded lazily (a /8 is not put in a list)."""

    def __init__(self, specs: list[str], exclude: list[str] = (), allow_special: bool = False):
        if not specs:
            raise UsageError("no target given")
        self.allow_special = allow_special
        self.exclude = [self._network(e, "--exclude-file entry") for e in exclude]
        self.parts: list[ipaddress.IPv4Network] = []
        self.skipped: dict[str, int] = {}
        for spec in specs:
            if "/" in spec:
                self.parts.append(self._network(spec, "target"))
            else:
                ip = ipaddress.ip_address(resolve(spec))
                why = special_reason(ip)
                if why and not allow_special:
                    raise UsageError(f"{spec}: {why} address refused (use --allow-special)")
                self.parts.append(ipaddress.ip_network(f"{ip}/32"))

    @staticmethod
    def _network(spec: str, what: str) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.ip_network(spec.strip(), strict=False)
        except ValueError:
            raise UsageError(
                f"malformed {what} {spec!r}: expected ADDRESS or ADDRESS/PREFIX"
            ) from None
        if net.version != 4:
            raise UsageError(f"{spec}: IPv6 targets are not supported yet")
        return net

    def upper_bound(self) -> int:
        return sum(n.num_addresses for n in self.parts)

    def count(self, limit: int = 1 << 18) -> int | None:
        """How many addresses the scan will probe (edges, special and excluded
        ones left out); None when more than ``limit`` addresses would have to
        be walked to know."""
        if self.upper_bound() > limit:
            return None
        saved = dict(self.skipped)
        n = sum(1 for _ in self)
        self.skipped = saved
        return n

    def __iter__(self):
        seen_small: set[str] = set()
        for net in self.parts:
            edges = set()
            if net.prefixlen < 31 and not self.allow_special:
                edges = {net.network_address, net.broadcast_address}
            for addr in net if net.num_addresses > 1 else [net.network_address]:
                if addr in edges:
                    self._skip("network/broadcast")
                    continue
                if net.num_addresses > 1 and not self.allow_special:
                    why = special_reason(addr)
                    if why:
                        self._skip(why)
                        continue
                if any(addr in e for e in self.exclude):
                    self._skip("excluded")
                    continue
                s = str(addr)
                if len(self.parts) > 1 or net.num_addresses == 1:
                    if s in seen_small:
                        continue
                    if len(seen_small) < 1_000_000:
                        seen_small.add(s)
                yield s

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1
