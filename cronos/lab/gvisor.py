"""gVisor target: netstack, gVisor's Go TCP/IP stack, behind a TAP in the scanner namespace.

    scanner ns cronos-<id>-scan
      tap cr<id>g<k> 10.77.k.1/24  ◄─ fd ─  gvisor_server (netstack, 10.77.k.2)

The persistent TAP is created in the scanner namespace; ``gvisor_server``
(Go, ``cronos/lab/gvisor_server/main.go``, also in the scanner namespace)
attaches to it with ``TUNSETIFF`` and hands the fd to netstack's ``fdbased``
link endpoint; netstack answers ARP and TCP for 10.77.k.2 itself, so every
SYN-ACK, FIN and RST the scanner times is netstack's. Port 80: HTTP/1.0,
the server closes first (FIN_WAIT1); port 1234: read until the peer's FIN,
then close (LAST_ACK). netstack runs with its defaults (no option set).

Build: the program is compiled at lab start, offline, in GOPATH mode against
Debian's sources (``GO111MODULE=off GOPATH=/usr/share/gocode``: Debian
packages ``golang-go`` and ``golang-gvisor-gvisor-dev`` with its Go
dependencies), into ``/var/cache/cronos/gvisor/<key>/gvisor_server``, where
``<key>`` is the first 16 hex digits of the SHA-256 of main.go, the package
version of golang-gvisor-gvisor-dev and ``go version``. A cached binary is
reused; a changed source, package or toolchain gives a new key (old keys stay
until removed by hand). Go's build cache is ``/var/cache/cronos/gvisor/go-build``.
Measured on the lab machine (2 cores): ~10 s cold, ~0 s cached.

Schedule, from the sources of golang-gvisor-gvisor-dev 0.0~20221219.0-2
(gVisor of 2022-12-19) under /usr/share/gocode/src/gvisor.dev/gvisor/
pkg/tcpip/transport/tcp/:

* SYN_RCVD: a passive handshake gets ``newBackoffTimer(clock, InitialRTO,
  MaxRTO, ...)`` (connect.go:187) with ``InitialRTO = time.Second``
  (connect.go:35) and ``MaxRTO = 120 * time.Second`` (snd.go:35). Each
  expiry calls ``backoffTimer.reset`` (connect.go:691-698), which doubles the
  timeout and fails with ``ErrTimeout`` once it exceeds MaxRTO; else the
  SYN-ACK is resent (connect.go:598-619). So SYN-ACK retransmissions at
  +1, 3, 7, 15, 31, 63 s (gaps 1, 2, 4, 8, 16, 32 s: 6 retransmissions);
  the next expiry, at 127 s, doubles 64 s to 128 s > 120 s and ends the
  handshake, silently: ``maybeFailTimerHandler`` (connect.go:126-138) only
  records the error and cleans up (even ``resetConnectionLocked`` sends no
  RST for ``ErrTimeout``, connect.go:1011-1016). The SYN-retries setting (``DefaultSynRetries = 6``,
  protocol.go:67) is, per endpoint.go:468-473, "currently a no-op".
* LAST_ACK / FIN_WAIT1: the FIN sits on the sender's write list and is
  resent by the ordinary retransmit timer (snd.go:430-568). The sender starts
  with ``RTO: 1 * time.Second`` (snd.go:186), but the handshake's RTT sample
  (connect.go:642-654) calls ``updateRTO`` (snd.go:343-393): the first sample
  sets SRTT = rtt, RTTVar = rtt/2, RTO = SRTT + 4*RTTVar = 3*rtt, clamped to
  ``MinRTO = 200 * time.Millisecond`` (snd.go:32). On the lab's TAP the RTT is
  ~1 ms, so RTO = 200 ms (any RTT below ~67 ms gives the same), doubled on
  every expiry (snd.go:489) and capped at MaxRTO 120 s (snd.go:491-493):
  FINs at +0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 120, ... s.
  The connection is dropped, again without RST (the timer's handler is
  ``maybeFailTimerHandler`` too, snd.go:205), when the segment's
  ``xmitCount`` (counted in snd.go:1637) exceeds ``MaxRetries = 15``
  (snd.go:47, checked at snd.go:561-564): 15 retransmissions, the last
  ~805 s and the drop ~925 s after the first FIN. (``remaining`` is MaxRTO, not
  MaxRTO minus the elapsed time, when no user timeout is set: snd.go:472-477.)
  In FIN_WAIT1 the RTO is the one after the ACK of the HTTP response, still
  clamped to 200 ms on a fast link.

SYN-ACK header (same sources): window 29184 = InitialCwnd 10 (snd.go:38) x
MSS 1460 x 2, rounded down to a multiple of 2^WS (endpoint.go:1220-1236);
options MSS, NOP, NOP, TS, NOP, WS=5 to the scanner's SYN (no SACK: off by
default), TTL 64, DF clear, IP IDs counting up:
``CronOS_Hdr(W=7200%TTL=64%DF=N%ID=57642%MSS=1460%O=MNNTNW%WS=5)``.

Measured on the lab machine (kernel 6.18, idle, TAP RTT ~1 ms), gaps in ms:
``cron-os scan --netns cronos-<id>-scan 10.77.1.2 -p 80 -m slf --tries 2
--timeout 30 --full`` (two tries each, the second in brackets):

* SYN_RCVD  1000.4, 2000.8, 4000.8, 8001.8, 16000.2 (1000.2, 2000.8, 4000.9,
  8001.8, 16000.9); with ``-m s --timeout 140 --window 200``: 1000.2, 2000.2,
  4000.2, 8000.2, 16003.5, 32001.9, then nothing for 137 s: no RST;
* LAST_ACK  200.6, 401.3, 800.5, 1600.4, 3201.3, 6405.3, 12800.3, 25620.4
  (200.6, 401.0, 800.8, 1600.2, 3201.2, 6405.4, 12800.3, 25620.5), no RST;
* FIN_WAIT1 201.5, 400.1, 800.7, 1600.2, 3201.3, 6405.3, 12800.2, 25620.6
  (201.3, 400.1, 800.6, 1600.2, 3201.4, 6405.1, 12800.4, 25620.5), no RST.

Gaps are the rule's values plus up to ~0.1 % (6405 for 6400, 25620 for
25600): consistent with the slack Linux grants the poll/epoll timeouts in
which the Go runtime sleeps until its next timer (0.1 % of the timeout for a
normal task). Go's timers never fire early.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import DependencyError, LabError
from .core import PORTS, LabContext, LabTarget, target_subnet, target_subnet6
from .slirp import wait_http

#: Debian packages the profile needs.
DEBIAN_PACKAGES = ("golang-go", "golang-gvisor-gvisor-dev")
GOCODE = Path("/usr/share/gocode")
GVISOR_SRC = GOCODE / "src" / "gvisor.dev" / "gvisor"
SOURCE_DIR = Path(__file__).resolve().parent / "gvisor_server"
CACHE_ROOT = Path(os.environ.get("CRONOS_GVISOR_CACHE", "/var/cache/cronos/gvisor"))
BINARY = "gvisor_server"
_BUILD_TIMEOUT_S = 600.0

#: SYN_RCVD: InitialRTO 1 s doubled until the next timeout exceeds MaxRTO
#: (120 s): 6 SYN-ACK retransmissions, given up silently at 127 s. Successive
#: gaps (ms), the p= values, as measured with cron-os scan (module docstring).
SYNACK_MS = (1000, 2000, 4000, 8000, 16000, 32000)
#: LAST_ACK / FIN_WAIT1: RTO clamped to MinRTO (200 ms) on the lab's link,
#: doubled, capped at 120 s, 15 retransmissions, no RST. Measured: 200.6,
#: 401, 800.6, 1600.3, 3201.3, 6405.3, 12800.3, 25620.5; the source gives the
#: rest (51.2 s, 102.4 s, then 120 s five times; dropped ~925 s after the first FIN).
FIN_MS = (200, 400, 800, 1600, 3200, 6405, 12800, 25620, 51200, 102400,
          120000, 120000, 120000, 120000, 120000)  # fmt: skip
RETRANS_MS = {"SYN_RCVD": SYNACK_MS, "LAST_ACK": FIN_MS, "FIN_WAIT1": FIN_MS}

_MISSING = (
    "the gvisor profile needs Debian golang-go and golang-gvisor-gvisor-dev "
    "(apt install golang-go golang-gvisor-gvisor-dev)"
)


def _go() -> str:
    go = shutil.which("go") or ("/usr/bin/go" if os.access("/usr/bin/go", os.X_OK) else None)
    if go is None or not (GVISOR_SRC / "pkg" / "tcpip" / "stack").is_dir():
        raise DependencyError(_MISSING)
    return go


def _package_version() -> str:
    try:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "golang-gvisor-gvisor-dev"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def _go_env(cache_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GO111MODULE="off",  # GOPATH mode: only Debian's sources, never the network
        GOPATH=str(GOCODE),
        GOCACHE=str(cache_root / "go-build"),
        GOFLAGS="",
        GOPROXY="off",
        CGO_ENABLED="0",
        HOME=env.get("HOME", "/root"),
    )
    return env


def cache_key(go: str) -> str:
    """SHA-256 (16 hex) of the Go source, the gVisor package version and ``go version``."""
    h = hashlib.sha256()
    for src in sorted(SOURCE_DIR.glob("*.go")):
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    h.update(_package_version().encode() + b"\0")
    try:
        ver = subprocess.run([go, "version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DependencyError(_MISSING) from exc
    h.update(ver.strip().encode())
    return h.hexdigest()[:16]


def build(cache_root: Path = CACHE_ROOT) -> tuple[Path, bool]:
    """The compiled ``gvisor_server``, built now if not cached: (path, built_now).

    ``DependencyError`` if the toolchain or gVisor's sources are missing,
    ``LabError`` if the compiler fails.
    """
    go = _go()
    out_dir = cache_root / cache_key(go)
    binary = out_dir / BINARY
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, False
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / ".lock", "w") as lock:  # concurrent labs build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary, False
        with tempfile.TemporaryDirectory(prefix="build-", dir=cache_root) as tmp:
            work = Path(tmp) / "src"
            shutil.copytree(SOURCE_DIR, work, ignore=shutil.ignore_patterns("go.mod", "go.sum"))
            try:
                res = subprocess.run(
                    [go, "build", "-trimpath", "-o", str(Path(tmp) / BINARY), "."],
                    cwd=work, env=_go_env(cache_root), capture_output=True, text=True,
                    timeout=_BUILD_TIMEOUT_S,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise LabError(f"building {BINARY} timed out") from exc
            if res.returncode != 0:
                lines = (res.stderr or res.stdout).strip().splitlines()
                if any("cannot find package" in ln for ln in lines):
                    raise DependencyError(f"{_MISSING}: {lines[0].strip()}")
                raise LabError(f"building {BINARY} failed: {' | '.join(lines[-3:])}")
            out_dir.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / BINARY, binary)  # atomic: never a half-written binary
    return binary, True


def setup(ctx: LabContext, index: int) -> LabTarget:
    binary, _ = build()
    net = target_subnet(index)
    ns = ctx.scanner_ns
    net6 = target_subnet6(index)
    tap = ctx.tap(f"g{index}", f"{net}.1/24", f"{net6}::1/64")

    mac = f"02:00:00:77:{index:02x}:03"
    argv = [str(binary), "-tap", tap, "-ip", f"{net}.2/24", "-ip6", f"{net6}::2/64",
            "-mac", mac, "-ports", ",".join(map(str, PORTS))]  # fmt: skip
    proc = ctx.spawn(ns, argv)
    ip = f"{net}.2"
    wait_http(ctx, ip, proc, "gvisor_server")
    wait_http(ctx, f"{net6}::2", proc, "gvisor_server (IPv6)")  # after its DAD (~1 s)
    p = ctx.profile
    notes = (
        f"gVisor netstack ({_package_version()}) on tap {tap} (scanner namespace); "
        "SYN-ACK gaps 1, 2, 4, 8, 16, 32 s, given up silently at 127 s; FIN gaps 0.2, 0.4, "
        "0.8 s ... doubling to 120 s, 15 retransmissions, no RST; SYN-ACK window 29184, "
        "MSS/TS/WS=5, no SACK"
    )
    return LabTarget(p.name if p else "gvisor", ip, PORTS, None, "gvisor", RETRANS_MS, notes,
                     ip6=f"{net6}::2")  # fmt: skip
