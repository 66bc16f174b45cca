"""A Linux server behind a router namespace that runs iptables SYNPROXY.

    scanner ns                 router ns cronos-<id>-r<k>            server ns cronos-<id>-t<k>
    cr<id>s<k> 10.77.k.1 ── cr<id>a<k> 10.77.k.254 | cr<id>b<k> 10.77.k.253 ── cr<id>t<k> 10.77.k.2

Point-to-point /32 addresses keep the server at 10.77.k.2 like every other
target. Over IPv6 each link has its own /64 (a ULA): the scanner's
``fd77:0:0:k::1`` and the router's ``::fe``; the router's ``fd79:0:0:k::fe``
and the server at ``fd79:0:0:k::2``, routed through the router; ip6tables
runs the same SYNPROXY rules (MSS 1440).

The router answers the SYN itself (one SYN-ACK, TTL 64, never
retransmitted) and only opens the connection to the server after the
handshake; forwarded server packets arrive with TTL 63. All rules live in
the router namespace and vanish with it.
"""

from __future__ import annotations

from .core import PORTS, LabContext, LabTarget, target_subnet, target_subnet6
from .linux import apply_stack_settings


def _synproxy(mss: int) -> list[str]:
    return ["SYNPROXY", "--sack-perm", "--timestamp", "--wscale", "7", "--mss", str(mss)]


def _rules(in_if: str, ports: tuple[int, ...], mss: int = 1460) -> list[list[str]]:
    match = ["-i", in_if, "-p", "tcp", "-m", "multiport", "--dports", ",".join(map(str, ports))]
    return [
        ["-t", "raw", "-A", "PREROUTING", *match, "--syn", "-j", "CT", "--notrack"],
        ["-A", "FORWARD", *match, "-m", "conntrack", "--ctstate", "INVALID,UNTRACKED",
         "-j", *_synproxy(mss)],
        ["-A", "FORWARD", *match, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
    ]  # fmt: skip


def _p2p(ctx: LabContext, ns: str, dev: str, local: str, peer: str) -> None:
    ctx.run("ip", "-n", ns, "addr", "add", f"{local}/32", "peer", f"{peer}/32", "dev", dev)


def setup(ctx: LabContext, index: int) -> LabTarget:
    net = target_subnet(index)
    router = ctx.new_netns(f"r{index}")
    server = ctx.new_netns(f"t{index}")
    scan_if, r_in = ctx.veth(ctx.scanner_ns, f"s{index}", router, f"a{index}")
    r_out, srv_if = ctx.veth(router, f"b{index}", server, f"t{index}")
    _p2p(ctx, ctx.scanner_ns, scan_if, f"{net}.1", f"{net}.254")
    ctx.run("ip", "-n", ctx.scanner_ns, "route", "add", f"{net}.0/24", "via", f"{net}.254")
    _p2p(ctx, router, r_in, f"{net}.254", f"{net}.1")
    _p2p(ctx, router, r_out, f"{net}.253", f"{net}.2")
    _p2p(ctx, server, srv_if, f"{net}.2", f"{net}.253")
    ctx.run("ip", "-n", server, "route", "add", f"{net}.0/24", "via", f"{net}.253")

    ctx.sysctl(router, [("net.ipv4.ip_forward", 1), ("net.ipv4.conf.all.rp_filter", 0),
                        ("net.ipv4.conf.default.rp_filter", 0),
                        ("net.ipv6.conf.all.forwarding", 1)])  # fmt: skip
    for rule in _rules(r_in, PORTS):
        ctx.ns_exec(router, "iptables", *rule)
    ip6 = _ipv6(ctx, index, router, server, scan_if, r_in, r_out, srv_if)
    for rule in _rules(r_in, PORTS, mss=1440):
        ctx.ns_exec(router, "ip6tables", *rule)
    # strict tracking: a mid-stream ACK must not create an entry behind SYNPROXY's back
    ctx.sysctl(router, [("net.netfilter.nf_conntrack_tcp_loose", 0)])

    apply_stack_settings(ctx, server, srv_if, net)
    ctx.start_servers(server, PORTS)
    p = ctx.profile
    return LabTarget(p.name, f"{net}.2", PORTS, server, p.kind, dict(p.expected_ms), p.notes,
                     gateway_ns=router, ip6=ip6)  # fmt: skip


def _ipv6(ctx: LabContext, index: int, router: str, server: str, scan_if: str, r_in: str,
          r_out: str, srv_if: str) -> str:  # fmt: skip
    """The two links' /64s and routes (see the module docstring); the server's address."""
    front, back = target_subnet6(index), f"fd79:0:0:{index:x}"
    for ns, dev, addr in (
        (ctx.scanner_ns, scan_if, f"{front}::1"),
        (router, r_in, f"{front}::fe"),
        (router, r_out, f"{back}::fe"),
        (server, srv_if, f"{back}::2"),
    ):
        ctx.run("ip", "-6", "-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
    ctx.run("ip", "-6", "-n", ctx.scanner_ns, "route", "add", f"{back}::/64", "via", f"{front}::fe")
    ctx.run("ip", "-6", "-n", server, "route", "add", f"{front}::/64", "via", f"{back}::fe")
    return f"{back}::2"
