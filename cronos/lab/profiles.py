"""Lab profiles: which real TCP stack a target runs, and what it should show.

One ``Profile`` per entry of ``PROFILES``. ``setup`` is a ``"module:function"``
string resolved when the profile is used, so a profile whose module is not
installed is simply unavailable (``LabError``), and the rest of the lab works.
The function is called as ``setup(ctx, index)`` with ``ctx.profile`` set to
the ``Profile`` (see ``cronos.lab.core`` for the contract).

``expected_ms`` maps a state to the gaps (ms) between the first packet of the
retransmitted series and each retransmission, measured on the lab machine
(kernel 6.18, veth, RTT < 0.1 ms); see docs/lab.md for how. Real gaps vary by
a few percent, plus up to one jiffy (1-4 ms).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import LabError

#: Linux 6.x default retransmissions of our FIN when the peer never ACKs it:
#: tcp_orphan_retries=0 means 8, RTO starting at rto_min=200 ms.
_LINUX_FIN_MS = (205, 420, 828, 1664, 3456, 6656, 13316, 27900)
_LINUX_SYNACK_MS = (1020, 2020, 4128, 8128, 16128)  # wheel: +0..32, +0..256 ms


def _same_closing(fin_ms: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {"LAST_ACK": fin_ms, "FIN_WAIT1": fin_ms}


@dataclass(frozen=True)
class Profile:
    """A kind of target: its sysctls, route options and expected schedules."""

    name: str
    description: str
    kind: str  # "linux", "synproxy", "slirp", "pytcp"
    setup: str  # "module:function", called as fn(ctx, index) -> LabTarget
    sysctls: tuple[tuple[str, str], ...] = ()  # applied in the server namespace
    route: tuple[tuple[str, str], ...] = ()  # e.g. (("rto_min", "20ms"),)
    expected_ms: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    notes: str = ""
    # how the scanner namespace reaches the target: "veth" (its address on the
    # veth end), "bridge" (on a bridge whose port is the veth end) or "macvlan"
    # (on a macvlan device over the veth end); Linux profiles only
    link: str = "veth"
    default: bool = True  # built by ``lab up`` / ``demo`` without --profile
    #: "module:function" that builds or checks what the profile needs (raises
    #: DependencyError); ``demo`` adds the profile when it succeeds
    ready: str = ""

    def resolve(self, what: str | None = None) -> Callable:
        """The setup function (or ``what``, another "module:function");
        ``LabError`` if its module is not available."""
        mod_name, _, fn_name = (what or self.setup).partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            raise LabError(f"profile {self.name!r} is not available ({mod_name}: {exc})") from exc
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            raise LabError(f"profile {self.name!r}: {self.setup} is not a function")
        return fn


_LINUX = "cronos.lab.linux:setup_linux"

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "linux-default",
            "Linux kernel stack, default TCP settings",
            "linux",
            _LINUX,
            sysctls=(("net.ipv4.tcp_synack_retries", "5"), ("net.ipv4.tcp_orphan_retries", "0")),
            expected_ms={"SYN_RCVD": _LINUX_SYNACK_MS, **_same_closing(_LINUX_FIN_MS)},
        ),
        Profile(
            "linux-synack2",
            "Linux, tcp_synack_retries=2",
            "linux",
            _LINUX,
            sysctls=(("net.ipv4.tcp_synack_retries", "2"),),
            expected_ms={"SYN_RCVD": (1020, 2020), **_same_closing(_LINUX_FIN_MS)},
        ),
        Profile(
            "linux-synack3",
            "Linux, tcp_synack_retries=3, tcp_orphan_retries=1",
            "linux",
            _LINUX,
            sysctls=(("net.ipv4.tcp_synack_retries", "3"), ("net.ipv4.tcp_orphan_retries", "1")),
            expected_ms={"SYN_RCVD": (1020, 2020, 4128), **_same_closing((210, 430))},
            notes="tcp_orphan_retries is a time budget counted from the first retransmission "
            "((2^(n+1)-1) x 200 ms = 0.6 s for 1): the 2nd FIN retransmission (0.42 s) is "
            "inside, the 3rd (1.26 s) far outside, so the count is stable",
        ),
        Profile(
            "linux-orphan2",
            "Linux, tcp_synack_retries=1, tcp_orphan_retries=2",
            "linux",
            _LINUX,
            sysctls=(("net.ipv4.tcp_synack_retries", "1"), ("net.ipv4.tcp_orphan_retries", "2")),
            expected_ms={"SYN_RCVD": (1020,), **_same_closing((207, 412, 832))},
        ),
        Profile(
            "linux-rto20",
            "Linux, tcp_synack_retries=2, tcp_orphan_retries=2, route rto_min 20ms",
            "linux",
            _LINUX,
            sysctls=(("net.ipv4.tcp_synack_retries", "2"), ("net.ipv4.tcp_orphan_retries", "2")),
            route=(("rto_min", "20ms"),),
            expected_ms={"SYN_RCVD": (1020, 2020), **_same_closing((25, 52, 100, 196, 404))},
            notes="rto_min only shortens data/FIN retransmissions, not SYN-ACKs",
        ),
        Profile(
            "linux-unlisted",
            "Linux, tcp_synack_retries=4, tcp_orphan_retries=5, route rto_min 50ms",
            "linux",
            _LINUX,
            sysctls=(("net.ipv4.tcp_synack_retries", "4"), ("net.ipv4.tcp_orphan_retries", "5")),
            route=(("rto_min", "50ms"),),
            # the Linux law's schedules (cronos/analysis/laws.py): 1, 2, 4, 8 s;
            # RTO ~51 ms doubling, 7 retransmissions within 63 x 200 ms
            expected_ms={
                "SYN_RCVD": (1020, 2020, 4128, 8128),
                **_same_closing((52, 104, 208, 416, 832, 1664, 3328)),
            },  # fmt: skip
            notes="settings no measured block lists: named by the Linux law's block, "
            "with the values read off its timings",
            default=False,
        ),
        *(
            Profile(
                f"linux-{link}",
                f"linux-rto20's stack; the scanner's address is on a {what}",
                "linux",
                _LINUX,
                sysctls=(
                    ("net.ipv4.tcp_synack_retries", "2"),
                    ("net.ipv4.tcp_orphan_retries", "2"),
                ),
                route=(("rto_min", "20ms"),),
                expected_ms={"SYN_RCVD": (1020, 2020), **_same_closing((25, 52, 100, 196, 404))},
                notes="a capture on every interface would see each packet twice here "
                f"(on the {link} and on the veth under it)",
                link=link,
                default=False,
            )
            for link, what in (
                ("bridge", "bridge whose port is the veth"),
                ("macvlan", "macvlan device over the veth"),
            )
        ),
        Profile(
            "synproxy",
            "Linux server behind a router running iptables SYNPROXY (ports 80, 1234)",
            "synproxy",
            "cronos.lab.synproxy:setup",
            sysctls=(("net.ipv4.tcp_synack_retries", "5"), ("net.ipv4.tcp_orphan_retries", "0")),
            expected_ms={"SYN_RCVD": (), **_same_closing(_LINUX_FIN_MS)},
            notes="one SYN-ACK (TTL 64, from the router), never retransmitted; "
            "server packets are forwarded (TTL 63)",
        ),
        Profile(
            "slirp",
            "libslirp user-mode stack (slirp4netns on the scanner namespace)",
            "slirp",
            "cronos.lab.slirp:setup",
            notes="target 10.0.2.2; schedule given by the module",
        ),
        Profile(
            "pytcp",
            "PyTCP user-space stack on a TAP device in the scanner namespace",
            "pytcp",
            "cronos.lab.pytcp_host:setup",
            notes="schedule given by the module",
        ),
        Profile(
            "lwip",
            "lwIP (Debian liblwip-dev) HTTP server on a TAP device, built at lab start",
            "lwip",
            "cronos.lab.lwip:setup",
            notes="schedule given by the module",
            default=False,
            ready="cronos.lab.lwip:build",
        ),
        Profile(
            "gvisor",
            "gVisor netstack (Debian golang-gvisor-gvisor-dev) listener on a TAP device",
            "gvisor",
            "cronos.lab.gvisor:setup",
            notes="schedule given by the module",
            default=False,
            ready="cronos.lab.gvisor:build",
        ),
        Profile(
            "uml",
            "User-Mode Linux 6.1 (Debian user-mode-linux) with its own HZ and sysctls",
            "uml",
            "cronos.lab.uml:setup",
            notes="schedule given by the module",
            default=False,
            ready="cronos.lab.uml:prepare",
        ),
        Profile(
            "hostile",
            "raw-packet responder, no TCP stack: floods, storms, wrong numbers (ports 80-84)",
            "hostile",
            "cronos.lab.hostile:setup",
            notes="see cronos/lab/hostile.py and docs/hostile.md",
        ),
    ]
}

#: What ``cron-os demo`` adds to the default profiles when they can be built
#: here (compilers and packages present): the stacks compiled at lab start.
DEMO_EXTRAS: tuple[str, ...] = ("lwip", "gvisor", "uml")


def make_ready(name: str) -> None:
    """Build what profile ``name`` needs (cached); DependencyError/LabError if it cannot."""
    p = get(name)
    if p.ready:
        p.resolve(p.ready)()


#: What ``cron-os lab up`` builds without ``--profile``: the kernel-only ones.
DEFAULT_PROFILES: tuple[str, ...] = tuple(
    n for n, p in PROFILES.items() if p.kind in ("linux", "synproxy") and p.default
)


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise LabError(f"unknown lab profile {name!r}; valid: {', '.join(PROFILES)}") from None


def available(name: str) -> bool:
    try:
        get(name).resolve()
    except LabError:
        return False
    return True
