"""RST suppression: an nftables table owned by one Cron-OS run.

Our kernel knows nothing of the connections we open over raw sockets and
would answer the target's SYN-ACK (or data) with RST, which ends the
measurement. The table drops exactly those RSTs: outgoing TCP with RST set
whose (destination address, destination port, source port) is in the set
``flows``, which holds one element per running probe. Nothing else on the
machine is touched. The table name carries the owner's pid and process start
time, so a table left by a SIGKILLed run is recognised and removed at the
next start (or by ``cron-os cleanup``).

    table inet cronos_<pid>_<start>_<rand> {
        set flows { type ipv4_addr . inet_service . inet_service; }
        chain out {
            type filter hook output priority filter; policy accept;
            tcp flags & rst == rst ip daddr . tcp dport . tcp sport @flows counter drop
        }
    }
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable

from ..errors import DependencyError, FirewallError, PrivilegeError

PREFIX = "cronos_"
_NAME_RE = re.compile(r"^cronos_(\d+)_(\d+)_[0-9a-f]+$")


def _nft(args: list[str], script: str | None = None) -> str:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not os.path.exists(nft):
        raise DependencyError("nft (nftables) is missing: apt install nftables")
    try:
        out = subprocess.run(
            [nft, *args], input=script, capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise DependencyError(f"cannot run nft: {exc}") from exc
    if out.returncode != 0:
        err = out.stderr.strip().splitlines()
        msg = err[0] if err else f"exit {out.returncode}"
        if "Operation not permitted" in out.stderr:
            raise PrivilegeError("changing the firewall needs root (CAP_NET_ADMIN)")
        raise FirewallError(f"nft {' '.join(args[:2])}: {msg}")
    return out.stdout


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_alive(pid: int, start: int) -> bool:
    return proc_start_time(pid) == start


def list_tables() -> list[str]:
    out = _nft(["list", "tables", "inet"])
    names = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith(PREFIX):
            names.append(parts[2])
    return names


def stale_tables() -> list[str]:
    """Tables of this tool whose owning process is gone."""
    stale = []
    for name in list_tables():
        m = _NAME_RE.match(name)
        if m is None or not owner_alive(int(m.group(1)), int(m.group(2))):
            stale.append(name)
    return stale


def remove_table(name: str) -> None:
    if not name.startswith(PREFIX):
        raise FirewallError(f"refusing to remove a table that is not ours: {name}")
    _nft(["delete", "table", "inet", name])


def cleanup_stale() -> list[str]:
    removed = []
    for name in stale_tables():
        try:
            remove_table(name)
            removed.append(name)
        except FirewallError:
            pass  # raced with another cleanup
    return removed


def _elements(flows: Iterable[tuple[str, int, int]]) -> str:
    return ", ".join(f"{d} . {dp} . {sp}" for d, dp, sp in flows)


class RstGuard:
    """Context manager owning the run's table; add/remove flows as probes run."""

    def __init__(self):
        pid = os.getpid()
        start = proc_start_time(pid) or 0
        self.name = f"{PREFIX}{pid}_{start}_{secrets.token_hex(3)}"
        self.active = False

    def __enter__(self) -> RstGuard:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def install(self) -> None:
        script = (
            f"table inet {self.name} {{\n"
            "  set flows { type ipv4_addr . inet_service . inet_service; }\n"
            "  chain out {\n"
            "    type filter hook output priority filter; policy accept;\n"
            "    tcp flags & rst == rst ip daddr . tcp dport . tcp sport @flows counter drop\n"
            "  }\n"
            "}\n"
        )
        _nft(["-f", "-"], script)
        self.active = True

    def add(self, flows: Iterable[tuple[str, int, int]]) -> None:
        """Start dropping our RSTs for (target, target_port, our_port) flows."""
        flows = list(flows)
        if flows:
            _nft(["-f", "-"], f"add element inet {self.name} flows {{ {_elements(flows)} }}\n")

    def discard(self, flows: Iterable[tuple[str, int, int]]) -> None:
        flows = list(flows)
        if flows and self.active:
            _nft(["-f", "-"], f"delete element inet {self.name} flows {{ {_elements(flows)} }}\n")

    def dropped(self) -> int:
        """RSTs dropped so far (the rule's counter)."""
        out = _nft(["list", "chain", "inet", self.name, "out"])
        m = re.search(r"counter packets (\d+)", out)
        return int(m.group(1)) if m else 0

    def remove(self) -> None:
        if self.active:
            self.active = False
            try:
                remove_table(self.name)
            except FirewallError:
                if self.name in list_tables():
                    raise
