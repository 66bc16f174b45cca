"""User-Mode Linux target: a second Linux kernel (6.1, HZ=100) as a process.

    scanner ns cronos-<id>-scan
      tap cr<id>u<k> 10.77.k.1/24  ◄─ vec0 ─  linux.uml (Debian user-mode-linux, 10.77.k.2)
                                              init: busybox, nc -ll on 80 and 1234

Debian's ``user-mode-linux`` (``/usr/bin/linux.uml``, Linux 6.1) runs as an
ordinary process in the scanner namespace; its network device ``vec0``
(vector driver, ``transport=tap``) is attached to a persistent TAP created
there, so the guest kernel answers for 10.77.k.2 with its own TCP stack,
timers and jiffies. Its root file system is a small initramfs (Debian's
static busybox and ``cronos/lab/uml/{init.sh,cronos-http,cronos-drain}``,
packed with ``cpio``) whose init sets the guest's sysctls (``SYSCTLS``), adds
the address and serves port 80 (HTTP/1.0, the server closes first) and 1234
(reads until EOF, then closes) with ``busybox nc -ll -e``.

Why it is worth a profile: the same TCP code as the host's kernel, with the
sysctls of ``linux-synack3`` (``tcp_synack_retries=3``,
``tcp_orphan_retries=1``), but ``CONFIG_HZ=100`` (Debian's
``/usr/share/doc/user-mode-linux/config.gz``) instead of the host's 250: every
timeout is counted in 10 ms jiffies and rounded by a coarser timer wheel.
Measured (``cron-os scan --netns cronos-<id>-scan 10.77.1.2 -p 80 -m slf
--tries 2 --timeout 30``, two tries each, ms between packets):

    SYN_RCVD   1063.6 2080.0 4080.2  |  1063.5 2080.1 4080.0   no RST
    LAST_ACK    213.9  430.1         |   208.1  409.9          (Connect 0.9, 1.1 ms)
    FIN_WAIT1   211.7  430.1         |   216.4  430.0          (Connect 1.2, 1.3 ms)

How Linux 6.1's rules give these at HZ=100 (J = 10 ms):

* SYN_RCVD: the request timer is ``TCP_TIMEOUT_INIT`` = 1 s = 100 jiffies,
  doubled at each expiry (200, 400), three retransmissions, then the request
  is dropped silently (no RST). 64..511 jiffies sit on level 1 of the timer
  wheel, whose grain is 8 jiffies = 80 ms, and the wheel rounds an expiry up
  to the *next* grain boundary (+1..8 jiffies). So the first gap is
  1000 + 0..80 ms depending on where the SYN fell in the 80 ms grid, and
  once the timer runs on that grid the next ones are exactly 2000 + 80 and
  4000 + 80 ms. (Host, HZ=250: level-1 grain 32 ms at 1-2 s, and 4 s = 1000
  jiffies is on level 2, grain 256 ms.)
* LAST_ACK / FIN_WAIT1 (orphaned sockets): RTO = ``usecs_to_jiffies(srtt +
  rttvar)``, rttvar at least rto_min (``TCP_RTO_MIN`` = HZ/5 = 20 jiffies):
  200 ms plus a ~1 ms srtt rounds *up* to 21 jiffies = 210 ms (host: 51
  jiffies = 204 ms); level 0 of the wheel adds one jiffy, less the FIN's
  phase in its jiffy: 210-220 ms. The second timer, armed from the first
  one's expiry, runs 2 x 21 + 1 = 43 jiffies = 430 ms. When tcp_metrics holds
  a larger RTT for the scanner from an earlier connection, tcp_init_metrics
  sets RTO = crtt + max(2 crtt, rto_min) with crtt truncated to 0 jiffies:
  exactly 20 jiffies, hence 200-210 then 410 ms (a later try's LAST_ACK).
  ``tcp_orphan_retries=1`` is a time budget of (2^2 - 1) x 200 ms = 600 ms
  from the first retransmission: the second one (430 ms after it) is inside,
  a third (1290 ms) outside, so two retransmissions and no RST. In FIN_WAIT1
  the timer restarts when our ACK of the response arrives, so the first gap
  may be one RTT longer.

The host's linux-synack3 gives the same counts; HZ shows in the grids: SYN
gaps 2 and 3 on 80 ms boundaries, closing gaps whole 10 ms jiffies (host:
4 ms).

Known problem on CPUs with a large XSAVE area (AVX-512, AMX): UML 6.1 sets
its processes' FPU state with ``PTRACE_SETREGSET NT_X86_XSTATE`` from a fixed
buffer the host kernel rejects (``EFAULT``), and panics at boot with "ptrace
set fp regs failed, errno = 14". ``uml/xstate_shim.c``, compiled with gcc at
the first lab start and used through ``LD_PRELOAD``, passes that call through
a full-size buffer. Whether it is needed is found out once (a probe boot
without it, then with it) and cached with everything else under
``/var/cache/cronos/uml/<hash>/``, the hash covering the sources, busybox,
linux.uml and the CPU. ``lab up --profile uml`` takes ~1.8 s (UML boots in
~1.5 s); the first one ~4.6 s (cpio, two probe boots, gcc).

IPv6: Debian's UML builds it as a module (``CONFIG_IPV6=m``); ``ipv6.ko``
and ``crc-ccitt.ko`` from ``/usr/lib/uml/modules`` go into the initramfs and
init loads them, so the guest also answers at ``fd77:0:0:k::2`` (tap side
``::1``). The listeners are ``busybox nc -ll``, whose listen backlog is 1:
with more than one SYN_RCVD probe pending at once the guest answers the
next SYN with a SYN cookie (one SYN-ACK, never retransmitted), so scan it
with few concurrent probes (the tests use two).

Processes: ``linux.uml`` forks helper processes (one per guest address
space, I/O helpers). All of them live in the scanner namespace, so the lab's
teardown kills them with it; the main process is also recorded by
``ctx.spawn``. ``umid=cronos-<id>-u<k>`` is in every one's command line.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import DependencyError, LabError
from . import state as _state
from .core import PORTS, LabContext, LabTarget, target_subnet, target_subnet6
from .slirp import wait_http

SRC = Path(__file__).with_name("uml")
CACHE_ROOT = Path("/var/cache/cronos/uml")
UML_DIR = Path("/run/cronos/uml")  # umid directories (pid file, mconsole socket)
CONFIG = Path("/usr/share/doc/user-mode-linux/config.gz")
DEBIAN_PACKAGES = "user-mode-linux busybox-static cpio"
#: The guest's own settings (same as linux-synack3: only HZ differs).
SYSCTLS = (("net.ipv4.tcp_synack_retries", "3"), ("net.ipv4.tcp_orphan_retries", "1"))
#: CONFIG_HZ of Debian's user-mode-linux 6.1 build (checked against CONFIG).
HZ = 100
JIFFY_MS = 1000 // HZ
#: Successive gaps (ms, the p= values) measured with ``cron-os scan -m slf`` on
#: the lab machine (Debian UML 6.1.176, HZ=100; see the module docstring).
SYNACK_MS = (1064, 2080, 4080)  # the first: 1000..1080, the SYN's phase in the 80 ms grid
FIN_MS = (212, 430)  # 200..220 (+1 RTT in FIN_WAIT1), then 430 (410 if RTO is 20 jiffies)
#: 256M (sparse: only what the guest touches is used): at mem=64M the guest's
#: kernel.threads-max is 256 and init's first fork failed with EAGAIN in 3 of
#: 16 boots; threads-max is raised on the command line as well.
MEM = "256M"
_KERNEL_ARGS = (f"mem={MEM}", "sysctl.kernel.threads-max=4096", "con=null", "ssl=null",
                "con0=null,fd:1")  # fmt: skip
_BOOT_TIMEOUT_S = 45.0
_PROBE_TIMEOUT_S = 30.0
_SOURCES = ("init.sh", "cronos-http", "cronos-drain", "xstate_shim.c")


def find_uml() -> str:
    path = shutil.which("linux.uml", path="/usr/bin:/usr/local/bin:" + os.environ.get("PATH", ""))
    if path is None:
        raise DependencyError(f"the uml profile needs Debian packages {DEBIAN_PACKAGES} "
                              "(linux.uml not found)")  # fmt: skip
    return path


def config_hz(config: Path = CONFIG) -> int | None:
    """CONFIG_HZ of the installed UML kernel, from the config Debian ships."""
    with contextlib.suppress(OSError), gzip.open(config, "rt") as f:
        for line in f:
            if line.startswith("CONFIG_HZ="):
                return int(line.split("=", 1)[1])
    return None


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise DependencyError(f"the uml profile needs Debian packages {DEBIAN_PACKAGES} "
                              f"({tool} not found)")  # fmt: skip
    return path


def _busybox() -> str:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p) and _static(p):
            return p
    raise DependencyError(f"the uml profile needs Debian packages {DEBIAN_PACKAGES} "
                          "(no static busybox)")  # fmt: skip


def _static(path: str) -> bool:
    """An ELF without a PT_INTERP program header (no dynamic loader)."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        return all(int.from_bytes(table[i : i + 4], "little") != 3
                   for i in range(0, len(table), phentsize))  # fmt: skip
    return False


def _cpu_key() -> str:
    """What decides whether the shim is needed: the CPU's features."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    return ""


#: Debian's UML builds IPv6 as a module (``CONFIG_IPV6=m``), which needs
#: crc-ccitt: both are packed into the initramfs and loaded by init, in order
_IPV6_MODULES = ("kernel/lib/crc-ccitt.ko", "kernel/net/ipv6/ipv6.ko")


def ipv6_modules() -> list[str]:
    """The module files IPv6 needs, in load order; [] if any is missing."""
    for tree in sorted(glob.glob("/usr/lib/uml/modules/*"), reverse=True):
        paths = [os.path.join(tree, m) for m in _IPV6_MODULES]
        if all(os.path.exists(p) for p in paths):
            return paths
    return []


def cache_dir(uml: str, busybox: str) -> Path:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((SRC / name).read_bytes())
    for path in (uml, busybox, *ipv6_modules()):
        st = os.stat(path)
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update(_cpu_key().encode())
    return CACHE_ROOT / h.hexdigest()[:16]


def _atomic_write(path: Path, build) -> Path:
    """``build(tmp_path)`` then rename: a cache entry is whole or absent."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        build(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def build_initramfs(cache: Path, busybox: str) -> Path:
    """The guest's root: busybox, /init and the two handlers, as a newc cpio."""
    cpio = _need("cpio")

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="cronos-uml-rd-") as root:
            r = Path(root)
            for d in ("bin", "dev", "proc", "sys", "tmp"):
                (r / d).mkdir()
            shutil.copy(busybox, r / "bin" / "busybox")
            shutil.copy(SRC / "init.sh", r / "init")
            for name in ("cronos-http", "cronos-drain"):
                shutil.copy(SRC / name, r / "bin" / name)
            if mods := ipv6_modules():
                (r / "lib").mkdir()
                for k, ko in enumerate(mods, 1):
                    shutil.copy(ko, r / "lib" / f"{k}-{os.path.basename(ko)}")
            for p in (r / "init", r / "bin" / "busybox", r / "bin" / "cronos-http",
                      r / "bin" / "cronos-drain"):  # fmt: skip
                p.chmod(0o755)
            with contextlib.suppress(OSError):  # the console before devtmpfs
                os.mknod(r / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
            names = sorted(str(p.relative_to(r)) for p in r.rglob("*"))
            with open(out, "wb") as f:
                res = subprocess.run([cpio, "-o", "-H", "newc", "--quiet"], cwd=r,
                                     input="".join(n + "\n" for n in names).encode(),
                                     stdout=f, stderr=subprocess.PIPE)  # fmt: skip
            if res.returncode != 0:
                raise LabError(f"cpio failed: {res.stderr.decode(errors='replace')[-200:]}")

    return _atomic_write(cache / "initramfs.cpio", build)


def build_shim(cache: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise DependencyError(
            "the uml profile needs Debian packages gcc libc6-dev to build "
            "its XSTATE shim (this CPU's XSAVE area is too big for UML)"
        )

    def build(out: Path) -> None:
        res = subprocess.run([gcc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(out),
                              str(SRC / "xstate_shim.c"), "-ldl"],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            raise DependencyError(f"gcc could not build the uml XSTATE shim: "
                                  f"{res.stderr.strip().splitlines()[-1:]}")  # fmt: skip

    return _atomic_write(cache / "xstate_shim.so", build)


def _boot_failure(log: str) -> str:
    """The line of a console log that says why the guest died."""
    for key in ("ptrace set fp regs failed", "CRONOS-UML-FAIL", "Kernel panic", "Error", "error"):
        for line in log.splitlines():
            if key in line:
                return line.strip()[:160]
    tail = log.strip().splitlines()
    return tail[-1][:160] if tail else "no console output"


def probe_boot(ns: str | None, uml: str, initramfs: Path, env: dict) -> tuple[bool, str]:
    """Boot the guest to its init and back; (reached init, console log)."""
    with tempfile.TemporaryDirectory(prefix="cronos-uml-probe-") as d:
        argv = [uml, *_KERNEL_ARGS, f"initrd={initramfs}", f"uml_dir={d}", "umid=probe",
                "cronos_probe=1"]  # fmt: skip
        if ns:
            argv = ["ip", "netns", "exec", ns, *argv]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=_PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            out = b"probe boot timed out"
        finally:
            # UML's helpers share its process group: none may survive the probe
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = out.decode(errors="replace")
    return "CRONOS-UML-PROBE-OK" in log, log


def prepare(ns: str | None = None) -> tuple[str, Path, dict[str, str]]:
    """(linux.uml, initramfs, extra environment), everything built or cached.

    On the first run for this cache key, a probe boot finds out whether the
    XSTATE shim is needed; the answer is cached (``needs_shim``).
    """
    uml = find_uml()
    busybox = _busybox()
    cache = cache_dir(uml, busybox)
    cache.mkdir(parents=True, exist_ok=True)
    initramfs = build_initramfs(cache, busybox)
    decision = cache / "needs_shim"
    if not decision.exists():
        ok, log = probe_boot(ns, uml, initramfs, dict(os.environ))
        needs = not ok and "set fp regs failed" in log
        if not ok and not needs:
            raise DependencyError(f"User-Mode Linux cannot boot here: {_boot_failure(log)}")
        if needs:
            shim = build_shim(cache)
            ok, log = probe_boot(ns, uml, initramfs, {**os.environ, "LD_PRELOAD": str(shim)})
            if not ok:
                raise DependencyError(f"User-Mode Linux cannot boot here: {_boot_failure(log)}")
        _atomic_write(decision, lambda p: p.write_text("1\n" if needs else "0\n"))
    extra = {}
    if decision.read_text().strip() == "1":
        extra["LD_PRELOAD"] = str(build_shim(cache))
    return uml, initramfs, extra


def _remove_stale_umids() -> None:
    """umid directories of labs that are gone (their UML was SIGKILLed)."""
    with contextlib.suppress(OSError):
        for d in UML_DIR.iterdir():
            parts = d.name.split("-")
            gone = (
                not (_state.STATE_DIR / f"{parts[1]}.json").exists() if len(parts) == 3 else False
            )
            if parts[0] == "cronos" and gone and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)


def _wait_ready(ctx: LabContext, log: Path, proc, tap: str) -> None:
    deadline = time.monotonic() + _BOOT_TIMEOUT_S
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "CRONOS-UML-READY" in text:
            if "CRONOS-UML-FAIL" in text:
                raise LabError(f"uml guest on {tap}: {_boot_failure(text)}")
            return
        if proc.poll() is not None or "Kernel panic" in text:
            raise DependencyError(f"User-Mode Linux cannot boot here: {_boot_failure(text)}")
        if time.monotonic() > deadline:
            raise LabError(f"uml guest on {tap} not ready after {_BOOT_TIMEOUT_S:g} s: "
                           f"{_boot_failure(text)}")  # fmt: skip
        time.sleep(0.05)


def setup(ctx: LabContext, index: int) -> LabTarget:
    uml, initramfs, extra_env = prepare(ctx.scanner_ns)
    net = target_subnet(index)
    ns = ctx.scanner_ns
    net6 = target_subnet6(index) if ipv6_modules() else None
    tap = ctx.tap(f"u{index}", f"{net}.1/24", f"{net6}::1/64" if net6 else None)

    umid = f"cronos-{ctx.id}-u{index}"
    UML_DIR.mkdir(parents=True, exist_ok=True)
    _remove_stale_umids()
    ctx.add_cleanup(lambda: shutil.rmtree(UML_DIR / umid, ignore_errors=True))
    for leftover in ("pid", "mconsole"):  # removed by UML on a clean exit, by us otherwise
        ctx.track_file(UML_DIR / umid / leftover)
    log = Path(f"/tmp/cronos-{ctx.id}-uml{index}.log")
    ctx.track_file(log)
    mac = f"02:00:00:77:{index:02x}:02"
    sysctls = ",".join(f"{k}={v}" for k, v in SYSCTLS)
    argv = [uml, *_KERNEL_ARGS, f"initrd={initramfs}", f"umid={umid}", f"uml_dir={UML_DIR}",
            f"vec0:transport=tap,ifname={tap},mac={mac}",
            "cronos_dev=vec0", f"cronos_ip={net}.2/24", f"cronos_sysctl={sysctls}",
            *([f"cronos_ip6={net6}::2/64"] if net6 else [])]  # fmt: skip
    env = {**os.environ, **extra_env}
    # the console goes to the log; exec keeps the recorded pid that of linux.uml
    proc = ctx.spawn(ns, ["sh", "-c", 'exec "$@" >"$0" 2>&1', str(log), *argv], env=env)
    _wait_ready(ctx, log, proc, tap)
    ip = f"{net}.2"
    wait_http(ctx, ip, proc, "linux.uml")
    if net6:
        wait_http(ctx, f"{net6}::2", proc, "linux.uml (IPv6)")
    p = ctx.profile
    expected = {"SYN_RCVD": SYNACK_MS, "LAST_ACK": FIN_MS, "FIN_WAIT1": FIN_MS}
    hz = config_hz() or HZ
    notes = (
        f"User-Mode Linux 6.1 (HZ={hz}) on tap {tap} (scanner namespace), "
        + ", ".join(f"{k.rsplit('.', 1)[1]}={v}" for k, v in SYSCTLS)
        + "; SYN-ACK 1, 2, 4 s rounded up to the 80 ms wheel grain (1000-1080, 2080, 4080 ms), "
        "no RST; FIN 210-220, 430 ms (RTO 21 jiffies, +1 jiffy), no RST"
        + (", XSTATE shim preloaded" if extra_env else "")
    )
    return LabTarget(p.name if p else "uml", ip, PORTS, None, "uml", expected, notes,
                     ip6=f"{net6}::2" if net6 else None)  # fmt: skip
