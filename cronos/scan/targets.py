"""Parsing of targets and ports from the command line (one clear error each)."""

from __future__ import annotations

import bisect
import ipaddress
import random
import socket
from dataclasses import dataclass

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


def _zone_ok(zone: str) -> bool:
    try:
        if zone.isdigit():
            socket.if_indextoname(int(zone))
        else:
            socket.if_nametoindex(zone)
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _literal(target: str, family: int | None) -> str | None:
    """The canonical text of an address literal, checked; None for a name."""
    try:
        addr = ipaddress.ip_address(target)
    except ValueError:
        if "%" in target:  # only an IPv6 literal takes a zone
            raise UsageError(
                f"malformed target {target!r}: a zone (%IFACE) follows an IPv6 address"
            ) from None
        return None
    if family and addr.version != family:
        raise UsageError(f"{target}: an IPv{addr.version} address, but -{family} was given")
    if addr.version == 6:
        base = ipaddress.IPv6Address(str(addr).split("%")[0])
        if addr.scope_id is not None:
            if not base.is_link_local:
                raise UsageError(
                    f"{target}: a zone (%{addr.scope_id}) is only for a link-local (fe80::/10) "
                    "address"
                )
            if not _zone_ok(addr.scope_id):
                raise UsageError(f"{target}: no interface {addr.scope_id!r} on this machine")
        elif base.is_link_local:
            raise UsageError(f"{target}: a link-local address needs its zone, as in {base}%eth0")
        if base.ipv4_mapped is not None:
            raise UsageError(
                f"{target}: an IPv4-mapped address; give the IPv4 address {base.ipv4_mapped}"
            )
    return str(addr)


def resolve(target: str, family: int | None = None) -> str:
    """An address for a literal or a host name: IPv4 or IPv6 literals as given
    (an IPv6 link-local one with its zone, ``fe80::1%eth0``); a name resolves
    to IPv4 (A), or to IPv6 (AAAA) with ``family=6`` (nmap's ``-6``)."""
    target = target.strip()
    if not target:
        raise UsageError("empty target")
    lit = _literal(target, family)
    if lit is not None:
        return lit
    if "/" in target:
        raise UsageError(f"{target}: a range is not one host; give one address or name")
    if ":" in target:
        raise UsageError(f"malformed IPv6 address {target!r}")
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(target, None, af, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        kind = " to an IPv6 address (AAAA)" if family == 6 else ""
        raise UsageError(f"cannot resolve {target!r}{kind}: {reason}") from None
    return _literal(infos[0][4][0], family)


def resolve_all(targets: list[str], family: int | None = None) -> list[str]:
    if not targets:
        raise UsageError("no target given")
    out: list[str] = []
    for t in targets:
        ip = resolve(t, family)
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

_SPECIAL = {
    4: [
        (ipaddress.ip_network("255.255.255.255/32"), "broadcast"),
        (ipaddress.ip_network("0.0.0.0/8"), "'this network'"),
        (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
        (ipaddress.ip_network("240.0.0.0/4"), "reserved"),
    ],
    6: [
        (ipaddress.ip_network("::/128"), "unspecified"),
        (ipaddress.ip_network("ff00::/8"), "multicast"),
    ],
}

#: the largest IPv6 prefix ever enumerated, even with --yes (a /104: as many
#: addresses as an IPv4 /8); a /64 holds 2**64 addresses: scan a list of
#: addresses (-iL, a hitlist) instead
MAX_V6_PREFIX_ADDRESSES = 1 << 24

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def special_reason(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for net, why in _SPECIAL[addr.version]:
        if addr in net:
            return why
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


def _range(spec: str) -> list[Network] | None:
    """``A-B`` (two addresses of one family) or nmap's ``10.0.0.1-20`` (the
    last IPv4 octet) as networks; None if ``spec`` is not a range (a host
    name may hold a dash)."""
    if "%" in spec:  # a zone may hold a dash (fe80::1%br-lan): no range
        if "-" in spec.partition("%")[0]:
            raise UsageError(f"range {spec!r}: a zone goes on one address, not on a range")
        return None
    lo, sep, hi = spec.partition("-")
    if not sep:
        return None
    try:
        a = ipaddress.ip_address(lo)
    except ValueError:
        return None  # a name such as my-host.example
    try:
        if a.version == 4 and hi.isdigit():
            b = ipaddress.ip_address(lo.rsplit(".", 1)[0] + "." + hi)
        else:
            b = ipaddress.ip_address(hi)
    except ValueError:
        raise UsageError(f"malformed range {spec!r}: expected FIRST-LAST addresses") from None
    if a.version != b.version:
        raise UsageError(f"range {spec!r} mixes IPv4 and IPv6: one family per range")
    if b < a:
        raise UsageError(f"range {spec!r}: the last address is before the first")
    return list(ipaddress.summarize_address_range(a, b))


def _is_prime(n: int) -> bool:
    """Miller-Rabin, deterministic below 3.3e24 (the first 13 primes as bases)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _safe_prime_above(n: int) -> int:
    """The least prime p = 2q + 1 (q prime) with p > n + 1: the group of the
    integers 1 .. p - 1 under multiplication modulo p holds every index
    1 .. n + 1, and p - 1 = 2q has two prime factors only (a generator is
    checked in two powers)."""
    q = max(2, (n + 1) // 2)
    while True:
        p = 2 * q + 1
        if p > n + 1 and _is_prime(q) and _is_prime(p):
            return p
        q += 1


@dataclass(frozen=True)
class Order:
    """ZMap's target order (Durumeric et al., USENIX Security 2013): the
    index space 0 .. n-1 walked as the cyclic group of the integers modulo a
    prime p > n, x -> x * g mod p from a generator g drawn from ``seed``; no
    network sees a burst of consecutive addresses, and nothing is stored.
    Shard ``shard`` of ``shards`` takes every ``shards``-th step of the cycle
    from step ``shard``: the shards of one seed cover every index exactly once.
    Every shard of a campaign must be given the same seed and shard count."""

    seed: int
    shard: int = 0
    shards: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 1 << 64:
            raise UsageError(f"--seed {self.seed}: expected an integer from 0 to 2^64-1")
        if self.shards < 1 or not 0 <= self.shard < self.shards:
            raise UsageError(
                f"--shard {self.shard}/{self.shards}: expected I/N with 0 <= I < N "
                "(0/2 and 1/2 cover the targets)"
            )

    def generator(self, p: int) -> int:
        """A generator of the integers modulo the safe prime ``p``, from the seed."""
        q = (p - 1) // 2
        rng = random.Random(self.seed)
        while True:
            g = rng.randrange(2, p - 1) if p > 3 else 2
            if pow(g, 2, p) != 1 and pow(g, q, p) != 1:
                return g

    def indices(self, n: int):
        """This shard's indices of 0 .. n-1, in the permutation's order."""
        if n <= 0:
            return
        p = _safe_prime_above(n)
        g = self.generator(p)
        x = pow(g, self.shard + 1, p)
        step = pow(g, self.shards, p)
        for _ in range(self.shard, p - 1, self.shards):
            if x <= n:
                yield x - 1
            x = x * step % p


def parse_shard(spec: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N), 0 <= I < N."""
    i, sep, n = spec.partition("/")
    try:
        a, b = int(i), int(n)
    except ValueError:
        raise UsageError(f"--shard {spec!r}: expected I/N, as 0/4 (shard 0 of 4)") from None
    if not sep or b < 1 or not 0 <= a < b or b > 1 << 20:
        raise UsageError(
            f"--shard {spec}: expected I/N with 0 <= I < N <= 1048576 (0/2 and 1/2 cover "
            "the targets)"
        )
    return a, b


class TargetSet:
    """The scan's targets, expanded lazily (a /8 is not put in a list).

    IPv4 and IPv6 may be mixed; ``family`` (4 or 6: ``-4``/``-6``) refuses the
    other family's literals and prefixes and picks A or AAAA for names. An
    IPv6 prefix larger than ``MAX_V6_PREFIX_ADDRESSES`` is never enumerated."""

    def __init__(
        self,
        specs: list[str],
        exclude: list[str] = (),
        allow_special: bool = False,
        family: int | None = None,
        order: Order | None = None,
    ):
        if not specs:
            raise UsageError("no target given")
        if family not in (None, 4, 6):
            raise UsageError(f"bad address family {family!r}: 4 or 6")
        self.allow_special = allow_special
        self.family = family
        self.order = order
        self.exclude = [self._network(e, "--exclude-file entry", None) for e in exclude]
        self.parts: list[Network] = []
        self.zoned: list[str] = []  # link-local addresses with their zone, in order
        self.skipped: dict[str, int] = {}
        for spec in specs:
            spec = spec.strip()
            nets = _range(spec)
            if nets is not None:
                for net in nets:
                    self._check_family(spec, net.version)
                self.parts.extend(nets)
            elif "/" in spec:
                self.parts.append(self._network(spec, "target", family))
            else:
                text = resolve(spec, family)
                ip = ipaddress.ip_address(text)
                why = special_reason(ip)
                if why and not allow_special:
                    raise UsageError(f"{spec}: {why} address refused (use --allow-special)")
                if ip.version == 6 and ip.scope_id is not None:
                    self.zoned.append(text)
                    continue
                self.parts.append(ipaddress.ip_network(ip))
        for net in self.parts:
            if net.version == 6 and net.num_addresses > MAX_V6_PREFIX_ADDRESSES:
                raise UsageError(
                    f"{net}: {net.num_addresses} addresses; Cron-OS never enumerates an IPv6 "
                    "prefix larger than a /104: list the addresses to scan (-iL FILE)"
                )

    def _check_family(self, spec: str, version: int) -> None:
        if self.family and version != self.family:
            raise UsageError(f"{spec}: an IPv{version} target, but -{self.family} was given")

    def _network(self, spec: str, what: str, family: int | None) -> Network:
        spec = spec.strip()
        if "%" in spec:
            raise UsageError(f"{what} {spec!r}: a zone goes on one address, not on a prefix")
        nets = _range(spec)
        if nets is not None and what != "target":
            if len(nets) == 1:
                return nets[0]
            raise UsageError(f"{what} {spec!r}: give a prefix (ADDRESS/PREFIX)")
        try:
            net = ipaddress.ip_network(spec, strict=False)
        except ValueError:
            raise UsageError(
                f"malformed {what} {spec!r}: expected ADDRESS or ADDRESS/PREFIX"
            ) from None
        if family:
            self._check_family(spec, net.version)
        if net.version == 6 and net.network_address.ipv4_mapped is not None:
            raise UsageError(f"{what} {spec!r}: an IPv4-mapped prefix; give the IPv4 prefix")
        return net

    def upper_bound(self) -> int:
        n = sum(n.num_addresses for n in self.parts) + len(self.zoned)
        if self.order is not None:  # this shard's share of the index space
            i, k = self.order.shard, self.order.shards
            n = -(-(n - i) // k) if n > i else 0
        return n

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

    def _excluded(self, addr) -> bool:
        # ipaddress does not compare families in ``in``: an IPv4 address is
        # "in" an IPv6 prefix of the same low bits
        return any(addr.version == e.version and addr in e for e in self.exclude)

    def __iter__(self):
        if self.order is not None:
            yield from self._walk()
            return
        seen_small: set[str] = set()
        for net in self.parts:
            edges = set()
            if not self.allow_special:
                if net.version == 4 and net.prefixlen < 31:
                    edges = {net.network_address, net.broadcast_address}
                elif net.version == 6 and net.prefixlen < 127:
                    edges = {net.network_address}  # the subnet-router anycast address
            for addr in net if net.num_addresses > 1 else [net.network_address]:
                if addr in edges:
                    self._skip("network/broadcast" if net.version == 4 else "subnet-router anycast")
                    continue
                if net.num_addresses > 1 and not self.allow_special:
                    why = special_reason(addr)
                    if why:
                        self._skip(why)
                        continue
                if self._excluded(addr):
                    self._skip("excluded")
                    continue
                s = str(addr)
                if len(self.parts) + len(self.zoned) > 1 or net.num_addresses == 1:
                    if s in seen_small:
                        continue
                    if len(seen_small) < 1_000_000:
                        seen_small.add(s)
                yield s
        for text in self.zoned:  # a link-local address: only an exact entry excludes it
            if self._excluded(ipaddress.ip_address(text.split("%")[0])):
                self._skip("excluded")
                continue
            if text not in seen_small:
                seen_small.add(text)
                yield text

    def _walk(self):
        """The targets in the order's pseudo-random permutation, this shard's
        share only. The prefixes are merged into disjoint blocks first (each
        address has one index: no shard scans an address another one scans);
        an address is skipped as network/broadcast (subnet-router anycast)
        when every prefix given that holds it has it as such, as in the
        plain walk."""
        blocks: list[Network] = []
        for version in (4, 6):
            nets = [n for n in self.parts if n.version == version]
            blocks.extend(ipaddress.collapse_addresses(nets))
        zoned = list(dict.fromkeys(self.zoned))
        starts, total = [], 0
        for b in blocks:
            starts.append(total)
            total += b.num_addresses
        n_blocks = total
        total += len(zoned)
        edges: set = set()
        if not self.allow_special:
            for net in self.parts:
                if net.version == 4 and net.prefixlen < 31:
                    edges.update((net.network_address, net.broadcast_address))
                elif net.version == 6 and net.prefixlen < 127:
                    edges.add(net.network_address)
        for i in self.order.indices(total):
            if i >= n_blocks:
                text = zoned[i - n_blocks]
                if self._excluded(ipaddress.ip_address(text.split("%")[0])):
                    self._skip("excluded")
                    continue
                yield text
                continue
            b = bisect.bisect_right(starts, i) - 1
            addr = blocks[b].network_address + (i - starts[b])
            if addr in edges and self._edge_everywhere(addr):
                self._skip("network/broadcast" if addr.version == 4 else "subnet-router anycast")
                continue
            if not self.allow_special:
                why = special_reason(addr)
                if why and any(n.num_addresses > 1 and addr in n for n in self.parts
                               if n.version == addr.version):  # fmt: skip
                    self._skip(why)
                    continue
            if self._excluded(addr):
                self._skip("excluded")
                continue
            yield str(addr)

    def _edge_everywhere(self, addr) -> bool:
        for net in self.parts:
            if net.version != addr.version or addr not in net:
                continue
            if net.version == 4 and net.prefixlen < 31:
                if addr not in (net.network_address, net.broadcast_address):
                    return False
            elif net.version == 6 and net.prefixlen < 127:
                if addr != net.network_address:
                    return False
            else:
                return False
        return True

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1
