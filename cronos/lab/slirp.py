"""libslirp target: the TCP stack of slirp4netns answers, not a kernel.

    scanner ns cronos-<id>-scan                    slirp host ns cronos-<id>-slh<k> (lo only)
    tap cr<id>l<k> 10.0.<1+k>.100/24  ◄─ fd ─  slirp4netns ──► 127.0.0.1:80,1234 (lab servers)
                  │
                  └─ scan 10.0.<1+k>.2:80 / :1234

slirp4netns runs inside the slirp host namespace and creates its TAP in the
scanner namespace (``--netns-type=path``). The scanner connects to slirp's
gateway address (``.2``); libslirp terminates that TCP connection in its own
BSD-derived stack and opens a second, ordinary kernel connection to
127.0.0.1 in the slirp host namespace, where ``cronos.lab.servers`` runs. The
kernel never sees the scanner's segments as its own, so the SYN-ACK and FIN
retransmissions are libslirp's (500 ms slow-timer ticks: 6 s then every 12 s
for SYN-ACKs, RST at ~75 s; 1.5 s, 3 s, 6 s, then every 12 s for FINs). Port forwarding
(``--api-socket add_hostfwd``) would NOT do: there the host kernel answers.

Containment: the slirp host namespace has only ``lo``, so libslirp can
reach nothing but the lab servers; DNS forwarding is disabled; no default
route is set in the scanner namespace (``--configure`` is not used).

Each target ``k`` gets its own tap and subnet ``10.0.<1+k>.0/24`` (``k=1`` is
slirp's default 10.0.2.0/24, gateway 10.0.2.2). Over IPv6 (``--enable-ipv6``)
slirp's network is always ``fd00::/64``: the first slirp target of a lab
answers at ``fd00::2`` (the scanner is ``fd00::100``), later ones are IPv4
only.
"""

from __future__ import annotations

import shutil
import sys
import time

from ..errors import DependencyError, LabError
from .core import PORTS, LabContext, LabTarget

#: Gaps (ms) from the first packet of the series, measured on the lab machine
#: with ``cron-os scan -m slf`` (libslirp 4.7.0, see docs/lab-extras.md).
#: SYN-ACK: 6 s, then every 12 s, RST/ACK at ~74.9 s. FIN: 1.5 s (up to 1.8,
#: the phase of the 500 ms tick), +3 s, +6 s, then every 12 s for minutes.
# successive gaps (ms), as the p= values of the fingerprint lines (measured)
SYNACK_MS = (6000, 11990, 11990, 11990, 11990, 11990)
FIN_MS = (1500, 3000, 5990, 11990, 11990, 11990, 11990, 11990)
_READY_TIMEOUT_S = 10.0


def subnet(index: int) -> str:
    """slirp's virtual network for target ``index``: ``10.0.<1+index>``."""
    if not 1 <= index <= 253:
        raise LabError(f"slirp target index {index} out of range 1..253")
    return f"10.0.{1 + index}"


def _wait_tap(ctx: LabContext, ns: str, tap: str, proc) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while ctx.ns_exec(ns, "ip", "link", "show", tap, check=False).returncode != 0:
        if proc.poll() is not None:
            raise LabError(
                f"slirp4netns exited with status {proc.returncode} before creating {tap}"
            )
        if time.monotonic() > deadline:
            raise LabError(f"slirp4netns did not create {tap} in {ns}")
        time.sleep(0.05)


_PROBE = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
    "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
    "d=b''\n"
    "while (c:=s.recv(4096)): d+=c\n"
    "sys.exit(0 if d.startswith(b'HTTP/') else 1)\n"
)


def wait_http(ctx: LabContext, ip: str, proc, what: str) -> None:
    """Prove the whole path to ``ip``:80 with one GET from the scanner namespace."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        res = ctx.ns_exec(ctx.scanner_ns, sys.executable, "-c", _PROBE, ip, "80", check=False)
        if res.returncode == 0:
            return
        if proc.poll() is not None:
            raise LabError(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} target {ip}:80 does not answer: {res.stderr.strip()[-200:]}")
        time.sleep(0.2)


def setup(ctx: LabContext, index: int) -> LabTarget:
    if shutil.which("slirp4netns") is None:
        raise DependencyError("the slirp profile needs slirp4netns (apt install slirp4netns)")
    net = subnet(index)
    host_ns = ctx.new_netns(f"slh{index}")
    ctx.start_servers(host_ns, PORTS)  # bound to 0.0.0.0, but only lo exists here
    tap = ctx.ifname(f"l{index}")
    ctx.record.add("interfaces", tap)  # recorded before it exists
    # IPv6: slirp's network is always fd00::/64 (gateway fd00::2): one slirp
    # target per lab can have it
    taken = ctx.ns_exec(ctx.scanner_ns, "ip", "-6", "addr", "show", "to", "fd00::/64").stdout
    v6 = not taken.strip()
    argv = ["slirp4netns", "--netns-type=path", "--disable-dns", f"--cidr={net}.0/24",
            *(["--enable-ipv6"] if v6 else []), f"/run/netns/{ctx.scanner_ns}", tap]  # fmt: skip
    proc = ctx.spawn(host_ns, argv)
    _wait_tap(ctx, ctx.scanner_ns, tap, proc)
    # no checksum offload: captures on the tap show real checksums
    ctx.ns_exec(ctx.scanner_ns, "ethtool", "-K", tap, "tx", "off", "tso", "off", "gso", "off",
                check=False)  # fmt: skip
    if v6:  # no router solicitations or autoconfiguration: one static address
        ctx.sysctl(ctx.scanner_ns, {f"net.ipv6.conf.{tap}.accept_ra": 0,
                                    f"net.ipv6.conf.{tap}.autoconf": 0,
                                    f"net.ipv6.conf.{tap}.router_solicitations": 0})  # fmt: skip
        ctx.run("ip", "-6", "-n", ctx.scanner_ns, "addr", "add", "fd00::100/64", "dev", tap,
                "nodad")  # fmt: skip
    else:
        ctx.sysctl(ctx.scanner_ns, {f"net.ipv6.conf.{tap}.disable_ipv6": 1})  # no ND chatter
    ctx.run("ip", "-n", ctx.scanner_ns, "addr", "add", f"{net}.100/24", "dev", tap)
    ctx.run("ip", "-n", ctx.scanner_ns, "link", "set", tap, "up")
    ip = f"{net}.2"
    wait_http(ctx, ip, proc, "slirp4netns")
    if v6:
        wait_http(ctx, "fd00::2", proc, "slirp4netns (IPv6)")
    p = ctx.profile
    expected = {"SYN_RCVD": SYNACK_MS, "LAST_ACK": FIN_MS, "FIN_WAIT1": FIN_MS}
    notes = (
        f"libslirp (slirp4netns) gateway of {net}.0/24, tap {tap} in the scanner namespace; "
        "SYN-ACK after 6 s then every 12 s, RST/ACK at ~75 s; FIN gaps 1.5-1.8, 3, 6, then 12 s "
        "for minutes; SYN-ACK window 65535 with MSS only (no WS/SACK/TS), ISN = k*64000+1"
    )
    return LabTarget(p.name if p else "slirp", ip, PORTS, None, "slirp", expected, notes,
                     ip6="fd00::2" if v6 else None)  # fmt: skip
