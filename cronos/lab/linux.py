"""Targets running the real Linux kernel stack, one namespace each.

    scanner ns  cr<id>s<k> 10.77.k.1/24 ── veth ── cr<id>t<k> 10.77.k.2/24  cronos-<id>-t<k>
                           fd77::k:0:0:1/64          fd77::k:0:0:2/64  (fd77:0:0:<k hex>::/64)

With ``link="bridge"`` the scanner's address is on a bridge ``cr<id>b<k>``
whose port is ``cr<id>s<k>``; with ``link="macvlan"`` on a macvlan device
``cr<id>m<k>`` over ``cr<id>s<k>``. A capture on every interface of the
scanner namespace sees each packet twice there, as on any host with VMs or
containers (a bridge), or with VLAN or bonding devices.

The profile's sysctls (and route options) are applied before the servers
start, so every socket is born with them.
"""

from __future__ import annotations

from ..errors import LabError
from .core import PORTS, LabContext, LabTarget, target_subnet, target_subnet6
from .servers import SPECIAL_PORTS


def apply_stack_settings(
    ctx: LabContext, ns: str, dev: str, net: str, net6: str | None = None
) -> None:
    """Per-namespace sysctls (the TCP ones, under net.ipv4, serve IPv6 too),
    then route options on ``net``/24 (and ``net6``::/64) via ``dev``."""
    profile = ctx.profile
    ctx.sysctl(ns, profile.sysctls)
    if profile.route:
        opts = [word for kv in profile.route for word in kv]
        ctx.run("ip", "-n", ns, "route", "change", f"{net}.0/24", "dev", dev, *opts)
        if net6 is not None:
            ctx.run("ip", "-6", "-n", ns, "route", "change", f"{net6}::/64", "dev", dev,
                    "metric", "256", *opts)  # the kernel's prefix route  # fmt: skip


def add_ula(ctx: LabContext, ns_a: str, dev_a: str, ns_b: str, dev_b: str, index: int) -> str:
    """``<net6>::1/64`` on ``dev_a`` (scanner side), ``::2/64`` on ``dev_b``,
    without duplicate address detection (usable at once); the /64's prefix."""
    net6 = target_subnet6(index)
    for ns, dev, host in ((ns_a, dev_a, 1), (ns_b, dev_b, 2)):
        ctx.run("ip", "-6", "-n", ns, "addr", "add", f"{net6}::{host}/64", "dev", dev, "nodad")
    return net6


def setup_linux(ctx: LabContext, index: int) -> LabTarget:
    net = target_subnet(index)
    ns = ctx.new_netns(f"t{index}")
    scan_if, tgt_if = ctx.veth(ctx.scanner_ns, f"s{index}", ns, f"t{index}")
    scan_if = _scanner_link(ctx, scan_if, index)
    ctx.run("ip", "-n", ctx.scanner_ns, "addr", "add", f"{net}.1/24", "dev", scan_if)
    ctx.run("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", tgt_if)
    net6 = add_ula(ctx, ctx.scanner_ns, scan_if, ns, tgt_if, index)
    apply_stack_settings(ctx, ns, tgt_if, net, net6)
    ctx.start_servers(ns, PORTS + SPECIAL_PORTS)  # 1235 no-close, 1236 reset
    p = ctx.profile
    return LabTarget(p.name, f"{net}.2", PORTS, ns, p.kind, dict(p.expected_ms), p.notes,
                     ip6=f"{net6}::2")  # fmt: skip


def _scanner_link(ctx: LabContext, veth: str, index: int) -> str:
    """The scanner-side device that gets the address (see the module docstring)."""
    link, ns = ctx.profile.link, ctx.scanner_ns
    if link == "veth":
        return veth
    if link == "bridge":
        dev = ctx.ifname(f"b{index}")
        ctx.record.add("interfaces", dev)
        ctx.run("ip", "-n", ns, "link", "add", dev, "type", "bridge", "stp_state", "0",
                "forward_delay", "0")  # fmt: skip
        ctx.run("ip", "-n", ns, "link", "set", veth, "master", dev)
    elif link == "macvlan":
        dev = ctx.ifname(f"m{index}")
        ctx.record.add("interfaces", dev)
        ctx.run("ip", "-n", ns, "link", "add", "link", veth, "name", dev, "type", "macvlan",
                "mode", "bridge")  # fmt: skip
    else:
        raise LabError(f"profile {ctx.profile.name!r}: unknown link {link!r}")
    ctx.run("ip", "-n", ns, "link", "set", dev, "up")
    return dev
