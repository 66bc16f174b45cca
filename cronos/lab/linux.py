"""Targets running the real Linux kernel stack, one namespace each.

    scanner ns  cr<id>s<k> 10.77.k.1/24 ── veth ── cr<id>t<k> 10.77.k.2/24  cronos-<id>-t<k>

The profile's sysctls (and route options) are applied before the servers
start, so every socket is born with them.
"""

from __future__ import annotations

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
    ctx.run("ip", "-n", ctx.scanner_ns, "addr", "add", f"{net}.1/24", "dev", scan_if)
    ctx.run("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", tgt_if)
    apply_stack_settings(ctx, ns, tgt_if, net)
    ctx.start_servers(ns, PORTS + SPECIAL_PORTS)  # 1235 no-close, 1236 reset
    p = ctx.profile
    return LabTarget(p.name, f"{net}.2", PORTS, ns, p.kind, dict(p.expected_ms), p.notes)
