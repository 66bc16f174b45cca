"""Targets running the real Linux kernel stack, one namespace each.

    scanner ns  cr<id>s<k> 10.77.k.1/24 ── veth ── cr<id>t<k> 10.77.k.2/24  cronos-<id>-t<k>

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
from .core import PORTS, LabContext, LabTarget, target_subnet
from .servers import SPECIAL_PORTS


def apply_stack_settings(ctx: LabContext, ns: str, dev: str, net: str) -> None:
    """Per-namespace sysctls, then route options on ``net``/24 via ``dev``."""
    profile = ctx.profile
    ctx.sysctl(ns, profile.sysctls)
    if profile.route:
        opts = [word for kv in profile.route for word in kv]
        ctx.run("ip", "-n", ns, "route", "change", f"{net}.0/24", "dev", dev, *opts)


def setup_linux(ctx: LabContext, index: int) -> LabTarget:
    net = target_subnet(index)
    ns = ctx.new_netns(f"t{index}")
    scan_if, tgt_if = ctx.veth(ctx.scanner_ns, f"s{index}", ns, f"t{index}")
    scan_if = _scanner_link(ctx, scan_if, index)
    ctx.run("ip", "-n", ctx.scanner_ns, "addr", "add", f"{net}.1/24", "dev", scan_if)
    ctx.run("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", tgt_if)
    apply_stack_settings(ctx, ns, tgt_if, net)
    ctx.start_servers(ns, PORTS + SPECIAL_PORTS)  # 1235 no-close, 1236 reset
    p = ctx.profile
    return LabTarget(p.name, f"{net}.2", PORTS, ns, p.kind, dict(p.expected_ms), p.notes)


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
