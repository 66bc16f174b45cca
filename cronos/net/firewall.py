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
        set flows6 { type ipv6_addr . inet_service . inet_service; }
        chain out {
            type filter hook output priority filter; policy accept;
            tcp flags & rst == rst ip daddr . tcp dport . tcp sport @flows counter drop
            tcp flags & rst == rst ip6 daddr . tcp dport . tcp sport @flows6 counter drop
        }
    }
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable

from ..errors import DependencyError, FirewallError, PrivilegeError

PREFIX = "cronos_"
_NAME_RE = re.compile(r"^cronos_(\d+)_(\d+)_[0-9a-f]+$")


class _LibNft:
    """libnftables (shipped with nftables) through ctypes: one in-process call
    per command, instead of one ``nft`` process (a few ms) per started probe."""

    def __init__(self):
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, text: str) -> tuple[int, str, str]:
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
        out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode()
        err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode()
        return rc, out, err


_LIB: list = []  # one context per process, made on first use (after any setns)


def _libnft() -> _LibNft | None:
    if not _LIB:
        try:
            _LIB.append(_LibNft())
        except OSError:
            _LIB.append(None)  # no libnftables: use the nft program
    return _LIB[0]


def _nft(args: list[str], script: str | None = None) -> str:
    text = script if script is not None else " ".join(args)
    lib = _libnft()
    if lib is not None:
        rc, out, err = lib.run(text)
        return _check(rc, out, err, args)
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not os.path.exists(nft):
        raise DependencyError("nft (nftables) is missing: apt install nftables")
    try:
        proc = subprocess.run(
            [nft, *args], input=script, capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise DependencyError(f"cannot run nft: {exc}") from exc
    return _check(proc.returncode, proc.stdout, proc.stderr, args)


def _check(rc: int, out: str, err: str, args: list[str]) -> str:
    if rc != 0:
        lines = err.strip().splitlines()
        msg = lines[0] if lines else f"exit {rc}"
        if "Operation not permitted" in err:
            raise PrivilegeError("changing the firewall needs root (CAP_NET_ADMIN)")
        raise FirewallError(f"nft {' '.join(args[:2])}: {msg}")
    return out


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


def _by_set(flows: Iterable[tuple[str, int, int]]) -> dict[str, list[tuple[str, int, int]]]:
    """Flows split by family: ``flows`` (IPv4) and ``flows6`` (IPv6, zone dropped)."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for d, dp, sp in flows:
        if ":" in d:
            out.setdefault("flows6", []).append((d.partition("%")[0], dp, sp))
        else:
            out.setdefault("flows", []).append((d, dp, sp))
    return out


class RstGuard:
    """Context manager owning the run's table; add/remove flows as probes run."""

    def __init__(self):
        pid = os.getpid()
        start = proc_start_time(pid) or 0
        self.name = f"{PREFIX}{pid}_{start}_{secrets.token_hex(3)}"
        self.active = False

    def __enter__(self) -> RstGuard:
        try:
            self.install()
        except BaseException:  # a signal that lands just after nft made the table
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def install(self) -> None:
        script = (
            f"table inet {self.name} {{\n"
            "  set flows { type ipv4_addr . inet_service . inet_service; }\n"
            "  set flows6 { type ipv6_addr . inet_service . inet_service; }\n"
            "  chain out {\n"
            "    type filter hook output priority filter; policy accept;\n"
            "    tcp flags & rst == rst ip daddr . tcp dport . tcp sport @flows counter drop\n"
            "    tcp flags & rst == rst ip6 daddr . tcp dport . tcp sport @flows6 counter drop\n"
            "  }\n"
            "}\n"
        )
        self.active = True  # before: remove() must try even if we are interrupted in _nft
        _nft(["-f", "-"], script)

    def add(self, flows: Iterable[tuple[str, int, int]]) -> None:
        """Start dropping our RSTs for (target, target_port, our_port) flows."""
        script = "".join(
            f"add element inet {self.name} {name} {{ {_elements(part)} }}\n"
            for name, part in _by_set(flows).items()
        )
        if script:
            _nft(["-f", "-"], script)

    def discard(self, flows: Iterable[tuple[str, int, int]]) -> None:
        script = "".join(
            f"delete element inet {self.name} {name} {{ {_elements(part)} }}\n"
            for name, part in _by_set(flows).items()
        )
        if script and self.active:
            _nft(["-f", "-"], script)

    def dropped(self) -> int:
        """RSTs dropped so far (the rules' counters, both families)."""
        out = _nft(["list", "chain", "inet", self.name, "out"])
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    def remove(self) -> None:
        if self.active:
            self.active = False
            try:
                remove_table(self.name)
            except FirewallError:
                if self.name in list_tables():
                    raise
