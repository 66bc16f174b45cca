"""A lab with thousands of target addresses, for scale benchmarks.

    with ScaleLab.create(10_000, ["linux-synack3"] * 4) as lab:
        lab.write_targets("hosts.txt")
        run_scan(netns=lab.scanner_ns, input_list="hosts.txt")
        print(lab.counters())

One scanner namespace and one target namespace per profile, joined by veth
exactly like a ``Lab`` (``10.77.k.1`` scanner side, ``10.77.k.2`` target
side; ``fd77:0:0:k::1`` and ``::2`` over IPv6). Target namespace *k* also
owns the whole of ``10.<100+k>.0.0/16`` and of ``fd78:0:0:k::/64`` (k in hex)
through AnyIP routes (``ip route add local 10.<100+k>.0.0/16 dev lo``):
every address of the range is local, so thousands of hosts cost no interface
and no address (this kernel has no ``dummy`` module). The scanner routes the
ranges via ``10.77.k.2`` and ``fd77:0:0:k::2``. One listener
(``cronos.lab.scale_listener``) serves port 80 on both families with a
backlog of 262144. ``hosts6`` lists as many IPv6 addresses as ``hosts``.

Each target namespace gets its profile's sysctls plus
``tcp_syncookies=0`` (a full SYN queue must drop, never answer with a cookie,
which is never retransmitted), ``tcp_max_syn_backlog`` and ``somaxconn``
large. ``counters()`` reads what tells whether a target fell back anyway:
TcpExt SyncookiesSent, ListenOverflows, ListenDrops, TCPReqQFullDrop, the
veth drop counters and the softnet backlog drops. The one machine-wide
change: ``net.core.netdev_max_backlog`` is raised (65536 by default; the
default 1000 drops SYN-ACK retransmissions that thousands of half-open
connections send in the same timer tick) and restored by ``destroy()``.

The lab is an ordinary lab record (``cronos.lab.state``): same naming,
same state file, removed on every exit path and by ``cleanup_stale``.
``n_hosts`` addresses are spread evenly over the namespaces; ``hosts`` lists
them interleaved (one of each namespace in turn) so that a scan of the first
N loads every namespace alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabError
from . import profiles as _profiles
from . import state as _state
from .core import LabContext, LabTarget, require_tools, wait_listening
from .lab import RecordedLab, _new_id, require_root
from .linux import add_ula

PORT = 80
LISTEN_BACKLOG = 262144
NETDEV_MAX_BACKLOG = 65536
MAX_HOSTS_PER_NS = 254 * 256  # last octet 1..254 in each /24 of the /16
#: Applied in every target namespace after the profile's own sysctls.
SCALE_SYSCTLS = (
    ("net.ipv4.tcp_syncookies", "0"),
    ("net.ipv4.tcp_max_syn_backlog", str(LISTEN_BACKLOG)),
    ("net.core.somaxconn", str(LISTEN_BACKLOG)),
)
_SYNACK_RE = re.compile(r"^linux-synack(\d)$")
#: TcpExt counters read by ``counters()``.
TCPEXT = ("SyncookiesSent", "ListenOverflows", "ListenDrops", "TCPReqQFullDrop",
          "TCPReqQFullDoCookies")  # fmt: skip


@dataclass(frozen=True)
class ScaleGroup:
    """One target namespace and the addresses it owns."""

    profile: str
    netns: str
    subnet: str  # the AnyIP range, e.g. "10.101.0.0/16"
    hosts: tuple[str, ...]
    synack_retries: int | None
    expected_synack_ms: tuple[int, ...]
    scan_if: str
    target_if: str
    hosts6: tuple[str, ...] = ()  # the same number of IPv6 addresses, in subnet6
    subnet6: str = ""  # the IPv6 AnyIP range, e.g. "fd78:0:0:1::/64"


def scale_profile(name: str) -> _profiles.Profile:
    """A registry profile, or ``linux-synackN`` (N 1..6) built on the fly."""
    if name in _profiles.PROFILES:
        return _profiles.get(name)
    m = _SYNACK_RE.match(name)
    if not m or not 1 <= int(m.group(1)) <= 6:
        return _profiles.get(name)  # raises LabError listing the valid names
    n = int(m.group(1))
    full = (*_profiles.PROFILES["linux-default"].expected_ms["SYN_RCVD"], 32200)
    return _profiles.Profile(
        name, f"Linux, tcp_synack_retries={n}", "linux", "cronos.lab.scale:setup_group",
        sysctls=(("net.ipv4.tcp_synack_retries", str(n)),),
        expected_ms={"SYN_RCVD": full[:n]},
    )  # fmt: skip


def synack_retries(profile: _profiles.Profile) -> int | None:
    for key, value in profile.sysctls:
        if key == "net.ipv4.tcp_synack_retries":
            return int(value)
    return None


def host_address(index: int, i: int) -> str:
    """Address ``i`` (0-based) of target namespace ``index``: never .0 nor .255."""
    return f"10.{100 + index}.{i // 254}.{1 + i % 254}"


def host_address6(index: int, i: int) -> str:
    """IPv6 address ``i`` (0-based) of target namespace ``index``: never the
    subnet-router anycast address (``::0``)."""
    return f"fd78:0:0:{index:x}::{i + 1:x}"


def split(n_hosts: int, groups: int) -> list[int]:
    base, extra = divmod(n_hosts, groups)
    return [base + (1 if k < extra else 0) for k in range(groups)]


def setup_group(ctx: LabContext, index: int, count: int) -> ScaleGroup:
    """Target namespace ``index`` owning ``count`` addresses (``ctx.profile`` set)."""
    profile = ctx.profile
    net, rng = f"10.77.{index}", f"10.{100 + index}.0.0/16"
    ns = ctx.new_netns(f"t{index}")
    scan_if, tgt_if = ctx.veth(ctx.scanner_ns, f"s{index}", ns, f"t{index}")
    ctx.run("ip", "-n", ctx.scanner_ns, "addr", "add", f"{net}.1/24", "dev", scan_if)
    ctx.run("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", tgt_if)
    ctx.run("ip", "-n", ns, "route", "add", "local", rng, "dev", "lo")
    ctx.run("ip", "-n", ctx.scanner_ns, "route", "add", rng, "via", f"{net}.2")
    # the same over IPv6: a ULA on the veth, an AnyIP /64 behind it
    net6 = add_ula(ctx, ctx.scanner_ns, scan_if, ns, tgt_if, index)
    rng6 = f"fd78:0:0:{index:x}::/64"
    ctx.run("ip", "-6", "-n", ns, "route", "add", "local", rng6, "dev", "lo")
    ctx.run("ip", "-6", "-n", ctx.scanner_ns, "route", "add", rng6, "via", f"{net6}::2")
    ctx.sysctl(ns, profile.sysctls)
    ctx.sysctl(ns, SCALE_SYSCTLS)
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "cronos.lab.scale_listener", "--port", str(PORT),
            "--backlog", str(LISTEN_BACKLOG)]  # fmt: skip
    proc = ctx.spawn(ns, argv, env=env)
    wait_listening(ctx, ns, [PORT], proc)
    hosts = tuple(host_address(index, i) for i in range(count))
    hosts6 = tuple(host_address6(index, i) for i in range(count))
    return ScaleGroup(profile.name, ns, rng, hosts, synack_retries(profile),
                      tuple(profile.expected_ms.get("SYN_RCVD", ())), scan_if, tgt_if,
                      hosts6, rng6)  # fmt: skip


class ScaleLab(RecordedLab):
    """A running scale lab; build it with ``ScaleLab.create``."""

    KIND = "scale lab"

    def __init__(self, record: _state.LabRecord, ctx: LabContext, groups: Sequence[ScaleGroup]):
        super().__init__(record, ctx)
        self.groups = tuple(groups)
        self._by_subnet = {g.subnet.split(".")[1]: g for g in self.groups}
        self._by_subnet6 = {g.subnet6.split("::")[0]: g for g in self.groups}

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every target address, interleaved across the namespaces."""
        longest = max((len(g.hosts) for g in self.groups), default=0)
        return tuple(g.hosts[i] for i in range(longest) for g in self.groups
                     if i < len(g.hosts))  # fmt: skip

    @property
    def hosts6(self) -> tuple[str, ...]:
        """Every IPv6 target address, interleaved across the namespaces."""
        longest = max((len(g.hosts6) for g in self.groups), default=0)
        return tuple(g.hosts6[i] for i in range(longest) for g in self.groups
                     if i < len(g.hosts6))  # fmt: skip

    def group_of(self, ip: str) -> ScaleGroup:
        try:
            if ":" in ip:
                return self._by_subnet6[ip.split("::")[0]]
            return self._by_subnet[ip.split(".")[1]]
        except (KeyError, IndexError):
            raise LabError(f"{ip} is not an address of scale lab {self.id}") from None

    def add_scanner(self, k: int = 2) -> str:
        """A second scanner (k = 2, 3, ...): namespace ``scan<k>`` at
        ``10.99.<k>.2``, joined to the first scanner's namespace, which routes
        its packets to the targets and back (IPv4). Two scanners with their
        own addresses and one target set: a cluster of scanner workers."""
        ctx = self._ctx
        ns = ctx.new_netns(f"scan{k}")
        a, b = ctx.veth(self.scanner_ns, f"r{k}", ns, f"q{k}")
        ctx.run("ip", "-n", self.scanner_ns, "addr", "add", f"10.99.{k}.1/24", "dev", a)
        ctx.run("ip", "-n", ns, "addr", "add", f"10.99.{k}.2/24", "dev", b)
        ctx.run("ip", "-n", ns, "route", "add", "default", "via", f"10.99.{k}.1")
        ctx.sysctl(self.scanner_ns, {"net.ipv4.ip_forward": 1})
        for g in self.groups:  # the targets' way back to the new scanner
            net = g.subnet.split(".")[1]  # 10.(100 + index).0.0/16
            index = int(net) - 100
            ctx.run("ip", "-n", g.netns, "route", "add", f"10.99.{k}.0/24", "via",
                    f"10.77.{index}.1")  # fmt: skip
        return ns

    def write_targets(
        self, path: str | os.PathLike, n: int | None = None, n6: int = 0
    ) -> list[str]:
        """Write the first ``n`` hosts (all by default), one a line, for ``-iL``,
        then the first ``n6`` IPv6 hosts."""
        hosts = list(self.hosts[:n] if n is not None else self.hosts) + list(self.hosts6[:n6])
        Path(path).write_text("".join(h + "\n" for h in hosts))
        return hosts

    # -- lifecycle ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        n_hosts: int,
        profiles: Sequence[str] = ("linux-synack3",) * 4,
        *,
        netdev_max_backlog: int | None = NETDEV_MAX_BACKLOG,
    ) -> ScaleLab:
        """``n_hosts`` addresses spread over one target namespace per profile.

        ``netdev_max_backlog``: raise the machine-wide per-CPU backlog to at
        least this (None: leave it). Thousands of SYN-ACK retransmissions
        leave a target in the same timer tick, and veth hands them to
        ``netif_rx``: with the default 1000, the excess is dropped before the
        scanner sees it. The old value is restored by ``destroy()`` (not
        after a SIGKILL: a larger backlog is harmless).
        """
        require_root()
        chosen = [scale_profile(n) for n in profiles]
        if not chosen:
            raise LabError("a scale lab needs at least one profile")
        if any(p.kind != "linux" for p in chosen):
            raise LabError("a scale lab only runs Linux kernel profiles")
        if len(chosen) > 150:
            raise LabError("at most 150 target namespaces")
        counts = split(n_hosts, len(chosen))
        if n_hosts < 1 or max(counts) > MAX_HOSTS_PER_NS:
            raise LabError(f"n_hosts must be 1..{MAX_HOSTS_PER_NS} per namespace")
        require_tools("ip", "ethtool", "sysctl", "ss")
        record = _state.LabRecord.new(_new_id(), [p.name for p in chosen], False)
        ctx = LabContext(record)
        groups: list[ScaleGroup] = []
        try:
            if netdev_max_backlog is not None:
                _raise_backlog(ctx, netdev_max_backlog)
            ctx.new_netns("scan")
            for index, (profile, count) in enumerate(zip(chosen, counts, strict=True), 1):
                ctx.profile = profile
                group = setup_group(ctx, index, count)
                groups.append(group)
                record.add("targets", LabTarget(
                    profile.name, group.hosts[0] if group.hosts else f"10.77.{index}.2", (PORT,),
                    group.netns, "linux", dict(profile.expected_ms),
                    f"scale lab: {count} addresses in {group.subnet}").to_json())  # fmt: skip
        except BaseException:
            with contextlib.suppress(LabError):
                cls(record, ctx, groups).destroy()
            raise
        return cls(record, ctx, groups)

    # -- observation -------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, int]]:
        """Drop and cookie counters: per target namespace, the scanner, and "softnet".

        Per namespace: the ``TCPEXT`` counters, ``veth_rx_dropped`` and
        ``veth_tx_dropped`` of its veth end. "softnet": packets dropped by
        the per-CPU backlog (``netdev_max_backlog``, machine-wide) and the
        limit itself. Take two readings and subtract (``delta``).
        """
        out: dict[str, dict[str, int]] = {}
        for g in self.groups:
            c = _tcpext(self._ctx.ns_exec(g.netns, "cat", "/proc/net/netstat").stdout)
            c.update(_link_drops(self._ctx, g.netns, g.target_if))
            out[g.netns] = c
        scan: dict[str, int] = {}
        for g in self.groups:
            for k, v in _link_drops(self._ctx, self.scanner_ns, g.scan_if).items():
                scan[k] = scan.get(k, 0) + v
        out[self.scanner_ns] = scan
        out["softnet"] = {
            "dropped": sum(int(line.split()[1], 16)
                           for line in Path("/proc/net/softnet_stat").read_text().splitlines()),
            "netdev_max_backlog": int(Path("/proc/sys/net/core/netdev_max_backlog").read_text()),
        }  # fmt: skip
        return out


def _raise_backlog(ctx: LabContext, want: int) -> None:
    path = Path("/proc/sys/net/core/netdev_max_backlog")
    old = int(path.read_text())
    if old >= want:
        return

    def restore() -> None:
        if int(path.read_text()) == want:  # nobody changed it since
            path.write_text(str(old))

    ctx.add_cleanup(restore)
    path.write_text(str(want))


def delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict:
    """``after - before`` for every counter (limits such as netdev_max_backlog kept)."""
    return {
        where: {
            k: v - before.get(where, {}).get(k, 0) if k != "netdev_max_backlog" else v
            for k, v in counters.items()
        }  # fmt: skip
        for where, counters in after.items()
    }


def _tcpext(text: str) -> dict[str, int]:
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return {k: table.get(k, 0) for k in TCPEXT}
    return dict.fromkeys(TCPEXT, 0)


def _link_drops(ctx: LabContext, ns: str, dev: str) -> dict[str, int]:
    res = ctx.ns_exec(ns, "ip", "-s", "-j", "link", "show", "dev", dev)
    stats = json.loads(res.stdout)[0].get("stats64", {})
    return {
        "veth_rx_dropped": int(stats.get("rx", {}).get("dropped", 0)),
        "veth_tx_dropped": int(stats.get("tx", {}).get("dropped", 0)),
    }
