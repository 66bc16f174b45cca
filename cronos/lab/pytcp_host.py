"""PyTCP target: a pure-Python TCP/IP stack behind a TAP in the scanner namespace.

    scanner ns cronos-<id>-scan
      tap cr<id>p<k> 10.77.k.1/24  ◄─ fd ─  python -m cronos.lab.pytcp_app (PyTCP, 10.77.k.2)

The persistent TAP is created in the scanner namespace; the PyTCP process
(also in the scanner namespace, ``cronos.lab.pytcp_app``) attaches to it with
``TUNSETIFF`` and answers ARP and TCP for 10.77.k.2 itself. Retransmissions
are PyTCP's: 1 s timer doubled (measured ~1.15, 2.27, 4.55 s, the timer
thread overshoots a little), three retries, then RST/ACK ~17.2 s after the
first packet, in all three states.

PyTCP is GPLv3 and optional (PyPI ``pytcp==2.7.6``); it runs in its own
process, Cron-OS never imports it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..errors import DependencyError
from .core import PORTS, LabContext, LabTarget, target_subnet, target_subnet6
from .slirp import wait_http

#: Gaps (ms) from the first packet of the series, measured on the lab machine
#: with ``cron-os scan -m slf`` (PyTCP 2.7.6, see docs/lab-extras.md);
#: RST/ACK follows at ~17.2 s.
RETRANS_MS = (1150, 2270, 4560)  # successive gaps (ms), the p= values (measured)


def setup(ctx: LabContext, index: int) -> LabTarget:
    if importlib.util.find_spec("pytcp") is None:
        raise DependencyError("the pytcp profile needs PyPI pytcp (pip install pytcp==2.7.6)")
    net = target_subnet(index)
    ns = ctx.scanner_ns
    net6 = target_subnet6(index)
    tap = ctx.tap(f"p{index}", f"{net}.1/24", f"{net6}::1/64")

    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    mac = f"02:00:00:77:{index:02x}:02"
    argv = [sys.executable, "-m", "cronos.lab.pytcp_app", "--tap", tap, "--ip", f"{net}.2/24",
            "--mac", mac, "--ip6", f"{net6}::2/64",
            "--ports", ",".join(map(str, PORTS))]  # fmt: skip
    proc = ctx.spawn(ns, argv, env=env)
    ctx.run("ip", "-6", "-n", ns, "neigh", "replace", f"{net6}::2", "lladdr", mac, "dev", tap,
            "nud", "permanent")  # fmt: skip
    ip = f"{net}.2"
    wait_http(ctx, ip, proc, "pytcp")
    wait_http(ctx, f"{net6}::2", proc, "pytcp (IPv6)")
    p = ctx.profile
    expected = {state: RETRANS_MS for state in ("SYN_RCVD", "LAST_ACK", "FIN_WAIT1")}
    notes = (
        f"PyTCP 2.7.6 on tap {tap} (scanner namespace); retransmissions ~1.15, 2.27, 4.55 s "
        "then RST/ACK ~17.2 s in every state; SYN-ACK window 65535, MSS 1460 only"
    )
    return LabTarget(p.name if p else "pytcp", ip, PORTS, None, "pytcp", expected, notes,
                     ip6=f"{net6}::2")  # fmt: skip
