"""lwIP target: Debian's liblwip (lwIP 2.1.3) behind a TAP in the scanner namespace.

    scanner ns cronos-<id>-scan
      tap cr<id>w<k> 10.77.k.1/24  ◄─ fd ─  lwip_server 10.77.k.2 (lwIP tcpip thread + tapif)

The persistent TAP is created in the scanner namespace; ``lwip_server``
(``cronos/lab/lwip_server.c``, compiled at lab start) runs in the scanner
namespace too and attaches to it through the unix port's ``tapif_init``
(``PRECONFIGURED_TAPIF=<tap>``: TUNSETIFF, no host-side configuration). It
serves port 80 (HTTP/1.0, closes first) and 1234 (closes on EOF) with the
raw API. Nothing of lwIP is tuned: Debian's lwipopts.h, opt.h defaults.

Build cache: ``/var/cache/cronos/lwip/<key>/lwip_server``, ``key`` = first 16
hex digits of SHA-256 over the C source, liblwip-dev's version, lwIP's
``lwipopts.h`` and the library's resolved path; a new key (a changed source
or library) builds a new directory, nothing is ever deleted. Missing ``gcc``
or ``liblwip-dev``: ``DependencyError``.

Why these gaps. Sources: lwIP 2.1.3 as Debian builds it (source package
lwip 2.1.3+dfsg1-2, whose patches leave src/core/tcp*.c untouched; the
installed headers are under /usr/include/lwip; tcp.c's line numbers agree
with the LWIP_ASSERT lines compiled into liblwip.so.0, e.g. tcp.c:1215).

* Clock. ``TCP_TMR_INTERVAL`` = 250 ms (lwip/priv/tcp_priv.h:120);
  ``tcp_tmr()`` calls ``tcp_slowtmr()`` every other time (tcp.c:239), so
  retransmission timeouts count ticks of ``TCP_SLOW_INTERVAL`` = 500 ms
  (tcp_priv.h:128). The TCP timer is started when the first pcb becomes
  active and re-armed ``sys_now() + 250`` after each run
  (timeouts.c:144-157, 171-174, 299), so a tick lasts 500 ms plus the
  thread's lateness (measured 500.3-500.4 ms) and its phase is that of the
  first connection. ``pcb->rtime`` counts ticks from the (re)transmission
  (tcp_out.c:1535-1536, tcp.c:1273, 1294): a timeout of *n* ticks fires
  after n-1 to n tick intervals the first time (the phase), exactly n after
  that (retransmissions leave on a tick).
* Initial RTO. ``tcp_alloc()`` sets ``rto = sv = 3000 / TCP_SLOW_INTERVAL``
  = 6 ticks (3 s), ``sa = 0`` (tcp.c:1901-1902). At each expiry
  (``rtime >= rto``, tcp.c:1276) ``tcp_slowtmr()`` sets ``rto = ((sa >> 3) +
  sv) << tcp_backoff[nrtx]`` (tcp.c:1288-1290) with ``tcp_backoff[13] =
  {1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 7, 7, 7}`` (tcp.c:163-164), then
  ``tcp_rexmit_rto_commit()`` increments ``nrtx`` (tcp_out.c:1692-1693).
  So the first timeout is rto, then rto<<1, <<2, <<3 ... (not <<2 first).
* SYN_RCVD: no RTT sample, 6 ticks then 6<<1 = 12 then 6<<2 = 24: SYN-ACKs
  at 0, ~3 s (measured 2.74), +6 s, and the next would be +12 s (at ~21 s),
  but ``tcp_slowtmr()`` removes a pcb older than ``TCP_SYN_RCVD_TIMEOUT``
  = 20000 ms = 40 ticks in SYN_RCVD (tcp_priv.h:132, tcp.c:1363-1368)
  without a RST (``pcb_reset`` is set only by the keepalive timeout,
  tcp.c:1340, 1398). ``TCP_SYNMAXRTX`` = 6 (opt.h:1253) only applies to
  SYN_SENT (tcp.c:1229) and ``TCP_MAXRTX`` = 12 (opt.h:1246, tcp.c:1232)
  is never reached: two retransmissions, ~3 and 6 s, no RST.
* LAST_ACK / FIN_WAIT1. The handshake's ACK is an RTT sample of 0 ticks;
  Van Jacobson's estimator (tcp_in.c:1345-1361) gives sa = 0, sv = 6 - 1 =
  5: rto = 5 ticks. In FIN_WAIT1 our ACK of the response data is a second
  0-tick sample: sv = 4, rto = 4 (the FIN rides on the response segment,
  tcp_out.c:1014, and that segment stays unacked). Then ``<<
  tcp_backoff[nrtx]``: LAST_ACK 5, 10, 20, 40, 80 ... ticks (gaps 2.0-2.5,
  5, 10, 20, 40 s), FIN_WAIT1 4, 8, 16, 32, 64 ... (1.5-2.0, 4, 8, 16,
  32 s), up to ``TCP_MAXRTX`` = 12 retransmissions (``rto`` capped at
  0x7FFF ticks), then the pcb is dropped without a RST; LAST_ACK also ends
  2 * ``TCP_MSL`` = 120 s (tcp_priv.h:137, tcp.c:1371-1376) after the last
  segment received. A scan with ``--timeout 30`` sees four gaps.
* SYN-ACK header: ``CronOS_Hdr(W=FFFF%TTL=255%DF=N%ID=..%MSS=1460%O=MNW%WS=1)``:
  TTL 255 (``TCP_TTL`` = ``IP_DEFAULT_TTL``, opt.h:1228, 801), window 65535
  (lwipopts.h:73 ``TCP_WND 0xFFFF``), MSS 1460 (lwipopts.h:72), window
  scale 1 echoed when the SYN offers one (lwipopts.h:74-75), no DF, IP ID
  counting up from 1, no SACK or timestamps (``LWIP_TCP_SACK_OUT`` 0,
  ``LWIP_TCP_TIMESTAMPS`` 0: opt.h:1268, 1430).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import DependencyError, LabError
from .core import PORTS, LabContext, LabTarget, target_subnet, target_subnet6
from .slirp import wait_http

#: Gaps (ms) between successive packets of each series (the p= values),
#: measured on the lab machine with ``cron-os scan -m slf --tries 2
#: --timeout 30`` (lwIP 2.1.3, Debian 2.1.3+dfsg1-2); see the docstring.
SYNACK_MS = (2745, 6005)  # then silence: dropped at 20 s, no RST
LAST_ACK_MS = (2240, 5005, 10015, 20010)  # then 40 s, 80 s ...
FIN_WAIT1_MS = (1740, 4005, 8010, 16015)  # then 32 s, 64 s ...
#: lwIP's clock: the slow timer tick, and the ticks of each timeout.
TICK_MS = 500
SYNACK_TICKS = (6, 12)
LAST_ACK_TICKS = (5, 10, 20, 40)
FIN_WAIT1_TICKS = (4, 8, 16, 32)

SOURCE = Path(__file__).with_name("lwip_server.c")
CACHE_ROOT = Path("/var/cache/cronos/lwip")
INCLUDE_DIR = Path("/usr/include/lwip")
_HEADERS = ("lwip/tcp.h", "lwip/tcpip.h", "netif/tapif.h", "lwipopts.h", "lwip/init.h")
_MISSING_LIB = "the lwip profile needs liblwip-dev (apt install liblwip-dev)"
_BUILD_TIMEOUT_S = 120


def lwip_version() -> str:
    """``2.1.3`` from lwip/init.h (liblwip-dev's headers)."""
    text = (INCLUDE_DIR / "lwip" / "init.h").read_text(errors="replace")
    parts = [re.search(rf"#define\s+LWIP_VERSION_{k}\s+(\d+)", text)
             for k in ("MAJOR", "MINOR", "REVISION")]  # fmt: skip
    if not all(parts):
        raise LabError(f"cannot read lwIP's version from {INCLUDE_DIR}/lwip/init.h")
    return ".".join(m.group(1) for m in parts)


def _deb_version(pkg: str) -> str:
    if shutil.which("dpkg-query") is None:
        return ""
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                         capture_output=True, text=True)  # fmt: skip
    return res.stdout.strip() if res.returncode == 0 else ""


def _library(gcc: str) -> Path:
    res = subprocess.run([gcc, "-print-file-name=liblwip.so"], capture_output=True, text=True)
    path = Path(res.stdout.strip())
    if res.returncode != 0 or not path.is_absolute() or not path.exists():
        raise DependencyError(_MISSING_LIB)
    return path.resolve()


def check_dependencies() -> tuple[str, Path]:
    """(gcc, liblwip.so); ``DependencyError`` naming the Debian package if not."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise DependencyError("the lwip profile needs gcc (apt install gcc libc6-dev)")
    if not all((INCLUDE_DIR / h).is_file() for h in _HEADERS):
        raise DependencyError(_MISSING_LIB)
    return gcc, _library(gcc)


def build_key(lib: Path) -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), lwip_version().encode(),
                 _deb_version("liblwip-dev").encode(), str(lib).encode(),
                 (INCLUDE_DIR / "lwipopts.h").read_bytes()):  # fmt: skip
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build() -> Path:
    """The compiled server, from the cache or built now (atomically)."""
    gcc, lib = check_dependencies()
    out_dir = CACHE_ROOT / build_key(lib)
    binary = out_dir / "lwip_server"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lwip_server.", dir=out_dir)
    os.close(fd)
    cmd = [gcc, "-O2", "-Wall", f"-I{INCLUDE_DIR}", "-o", tmp, str(SOURCE), "-llwip", "-lpthread"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        if res.returncode != 0:
            err = (res.stderr or res.stdout).strip().splitlines()
            if any("No such file" in ln or "cannot find -llwip" in ln for ln in err):
                raise DependencyError(_MISSING_LIB)
            raise LabError(f"building {SOURCE.name} failed: {err[-1] if err else res.returncode}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)  # concurrent builds: the last complete one wins
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"building {SOURCE.name}: gcc timed out") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    (out_dir / "BUILD").write_text(
        f"{' '.join(cmd[:4])} -o lwip_server {SOURCE} -llwip -lpthread\n"
        f"lwIP {lwip_version()} liblwip-dev {_deb_version('liblwip-dev')} {lib}\n"
    )
    return binary


def setup(ctx: LabContext, index: int) -> LabTarget:
    binary = build()
    net = target_subnet(index)
    ns = ctx.scanner_ns
    net6 = target_subnet6(index)
    tap = ctx.tap(f"w{index}", f"{net}.1/24", f"{net6}::1/64")

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PRECONFIGURED_TAPIF": tap}
    mac = f"02:00:00:77:{index:02x}:03"
    proc = ctx.spawn(ns, [str(binary), f"{net}.2", "255.255.255.0", mac, f"{net6}::2"], env=env)
    # lwIP left the kernel's neighbour solicitations for its address
    # unanswered here (the HTTP check timed out; why was not found out): its
    # MAC is given to our side as a permanent neighbour entry
    ctx.run("ip", "-6", "-n", ns, "neigh", "replace", f"{net6}::2", "lladdr", mac, "dev", tap,
            "nud", "permanent")  # fmt: skip
    ip = f"{net}.2"
    wait_http(ctx, ip, proc, "lwip_server")
    wait_http(ctx, f"{net6}::2", proc, "lwip_server (IPv6)")
    p = ctx.profile
    expected = {"SYN_RCVD": SYNACK_MS, "LAST_ACK": LAST_ACK_MS, "FIN_WAIT1": FIN_WAIT1_MS}
    notes = (
        f"lwIP {lwip_version()} (Debian liblwip) on tap {tap} (scanner namespace); 500 ms "
        "slow timer: SYN-ACK ~2.7, +6 s then dropped at 20 s without RST; FIN ~2.2, 5, 10, "
        "20 s (LAST_ACK), ~1.7, 4, 8, 16 s (FIN_WAIT1); SYN-ACK TTL 255, window 65535, "
        "MSS 1460, WS 1 if offered"
    )
    return LabTarget(p.name if p else "lwip", ip, PORTS, None, "lwip", expected, notes,
                     ip6=f"{net6}::2")  # fmt: skip
