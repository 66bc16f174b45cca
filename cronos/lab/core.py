"""The contract between the lab and the code that builds one target.

A profile builds its target with a ``setup(ctx, index) -> LabTarget``
callable. ``ctx`` is the ``LabContext`` of the lab being created; ``index``
(1, 2, ...) is the target's number, which gives it the subnet 10.77.<index>.0/24
(and, for targets reachable over IPv6, fd77:0:0:<index in hex>::/64).
A setup function may live in any module and be registered in
``cronos.lab.profiles.PROFILES`` as a ``"module:function"`` string, e.g.
``"cronos.lab.slirp:setup"``; it is imported only when the profile is used.

What a setup function may use (everything it creates is recorded in the lab's
state file *before* it exists, so teardown finds it on every exit path,
including SIGKILL of the creating process):

``ctx.id``                  6 hex chars, unique per lab
``ctx.profile``             the ``cronos.lab.profiles.Profile`` being built
``ctx.scanner_ns``          the namespace the scan runs in (``cronos-<id>-scan``)
``ctx.run(*cmd)``           run a program in the root namespace; raises
                            ``DependencyError`` (missing) / ``LabError`` (failed)
``ctx.ns_exec(ns, *cmd)``   the same, inside namespace ``ns``
``ctx.sysctl(ns, {k: v})``  ``sysctl -w`` inside ``ns`` (before servers start)
``ctx.record.add(key, v)``  record an object you create yourself ("interfaces",
                            "files", ...) *before* creating it
``ctx.new_netns(role)``     create ``cronos-<id>-<role>`` with ``lo`` up
``ctx.ifname(tag)``         ``cr<id><tag>`` (at most 15 chars): the only names
                            interfaces may have
``ctx.veth(ns_a, tag_a, ns_b, tag_b)``
                            a veth pair created directly inside the two
                            namespaces, offloads off, both ends up
``ctx.spawn(ns, argv)``     start a long-lived process (in ``ns``, or in the
                            root namespace if ``ns`` is None) in its own
                            session, silent; killed at teardown
``ctx.start_servers(ns, ports)``
                            the lab's TCP servers (``cronos.lab.servers``),
                            returning once every port listens
``ctx.tap(tag, cidr)``      a TAP ``cr<id><tag>`` in the scanner namespace, up,
                            with ``cidr`` on our side (user-space stacks)
``ctx.track_file(path)``    a file or socket path removed at teardown
``ctx.add_cleanup(fn)``     a callable run at teardown (LIFO) by the creating
                            process only; state-recorded objects are removed
                            even if it never runs

Teardown order: cleanups (LIFO), processes (SIGTERM then SIGKILL, only if the
recorded pid still has its recorded start time), every process left inside a
lab namespace, the namespaces (which deletes their veth ends and firewall
rules), tracked files, the state file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DependencyError, LabError
from . import state as _state

#: The ports every Linux target serves: 80 (HTTP/1.0, server closes first) and
#: 1234 (reads until EOF, then closes).
PORTS: tuple[int, ...] = (80, 1234)
#: Keys of ``expected_ms``: the Cron-OS states.
STATES = ("SYN_RCVD", "LAST_ACK", "FIN_WAIT1")
_RUN_TIMEOUT_S = 30.0
_LISTEN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class LabTarget:
    """One target of a lab, as the scanner sees it.

    ``expected_ms`` maps a state name (``STATES``) to the successive gaps, in
    milliseconds, between the packets of the retransmitted series (the
    ``p=`` values / 1000; ``()`` means: one packet, no retransmission). A
    state missing from the map has no documented expectation.
    ``netns`` is the namespace of the server (None if it is not a namespace,
    e.g. slirp); ``gateway_ns`` a middlebox namespace in front of it, if any.
    """

    profile: str
    ip: str
    ports: tuple[int, ...] = PORTS
    netns: str | None = None
    kind: str = "linux"
    expected_ms: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    notes: str = ""
    gateway_ns: str | None = None
    ip6: str | None = None  # the same target over IPv6 (a ULA), if it has one

    def to_json(self) -> dict:
        d = asdict(self)
        d["expected_ms"] = {k: list(v) for k, v in self.expected_ms.items()}
        d["ports"] = list(self.ports)
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> LabTarget:
        d = dict(d)
        d["ports"] = tuple(d.get("ports", PORTS))
        d["expected_ms"] = {k: tuple(v) for k, v in d.get("expected_ms", {}).items()}
        return cls(**d)


def target_subnet(index: int) -> str:
    """The /24 of target ``index`` (scanner side .1, target .2)."""
    if not 1 <= index <= 254:
        raise LabError(f"target index {index} out of range 1..254")
    return f"10.77.{index}"


def target_subnet6(index: int) -> str:
    """The IPv6 /64 of target ``index`` (a ULA: scanner side ::1, target ::2)."""
    target_subnet(index)  # the same range check
    return f"fd77:0:0:{index:x}"


class LabContext:
    """Helpers and bookkeeping for one lab being built (see module docstring)."""

    def __init__(self, record: _state.LabRecord):
        self.record = record
        self._cleanups: list[Callable[[], object]] = []
        self.procs: list[subprocess.Popen] = []
        self.profile = None  # set by the Lab before each setup(ctx, index) call

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def scanner_ns(self) -> str:
        return self.record.scanner_ns

    # -- running programs ------------------------------------------------------
    def run(
        self, *cmd: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return run(*cmd, check=check, input=input)

    def ns_exec(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", ns, *cmd, check=check)

    def sysctl(self, ns: str, settings: Mapping[str, object] | Sequence[tuple[str, object]]):
        items = settings.items() if isinstance(settings, Mapping) else settings
        for key, value in items:
            self.ns_exec(ns, "sysctl", "-q", "-w", f"{key}={value}")

    # -- objects -----------------------------------------------------------------
    def ifname(self, tag: str) -> str:
        name = f"cr{self.id}{tag}"
        if len(name) > 15 or not tag.isalnum():
            raise LabError(f"interface tag {tag!r} gives an invalid name {name!r}")
        return name

    def new_netns(self, role: str) -> str:
        if not role.isalnum():
            raise LabError(f"namespace role {role!r} must be alphanumeric")
        name = f"cronos-{self.id}-{role}"
        self.record.add("namespaces", name)  # recorded before it exists
        self.run("ip", "netns", "add", name)
        self.run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, tag_a: str, ns_b: str, tag_b: str) -> tuple[str, str]:
        """A veth pair born inside ``ns_a``/``ns_b`` (never in the root namespace)."""
        a, b = self.ifname(tag_a), self.ifname(tag_b)
        self.record.add("interfaces", a)
        self.record.add("interfaces", b)
        self.run("ip", "-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b,
                 "netns", ns_b)  # fmt: skip
        for ns, dev in ((ns_a, a), (ns_b, b)):
            # correct checksums in captures, no coalesced segments
            self.ns_exec(ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
                         "gro", "off")  # fmt: skip
            self.run("ip", "-n", ns, "link", "set", dev, "up")
        return a, b

    def tap(self, tag: str, address: str, address6: str | None = None) -> str:
        """A persistent TAP ``cr<id><tag>`` in the scanner namespace, with
        ``address`` (CIDR) on our side, up: a user-space stack attaches to it
        and answers as another address of its subnet. ``address6``: an IPv6
        CIDR too (no DAD, no router solicitation); without it IPv6 is off
        on the TAP (no ND/RS chatter)."""
        ns, tap = self.scanner_ns, self.ifname(tag)
        self.record.add("interfaces", tap)  # recorded before it exists
        self.run("ip", "-n", ns, "tuntap", "add", "mode", "tap", "name", tap)
        self.add_cleanup(lambda: self.run("ip", "-n", ns, "link", "del", tap, check=False))
        self.ns_exec(ns, "ethtool", "-K", tap, "tx", "off", "tso", "off", "gso", "off",
                     check=False)  # fmt: skip
        if address6 is None:
            self.sysctl(ns, {f"net.ipv6.conf.{tap}.disable_ipv6": 1})
        else:
            self.sysctl(ns, {f"net.ipv6.conf.{tap}.accept_ra": 0,
                             f"net.ipv6.conf.{tap}.router_solicitations": 0})  # fmt: skip
            self.run("ip", "-6", "-n", ns, "addr", "add", address6, "dev", tap, "nodad")
        self.run("ip", "-n", ns, "addr", "add", address, "dev", tap)
        self.run("ip", "-n", ns, "link", "set", tap, "up")
        return tap

    def track_file(self, path: str | os.PathLike) -> None:
        self.record.add("files", str(path))

    def add_cleanup(self, fn: Callable[[], object]) -> None:
        self._cleanups.append(fn)

    def run_cleanups(self) -> list[BaseException]:
        errors = []
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as exc:  # teardown goes on; the caller reports
                errors.append(exc)
        return errors

    # -- processes -----------------------------------------------------------------
    def spawn(
        self, ns: str | None, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        except FileNotFoundError as exc:
            raise DependencyError(f"{cmd[0]} not found") from exc
        self.procs.append(proc)
        self.record.add("pids", _state.proc_entry(proc.pid, ns, argv))
        return proc

    def start_servers(self, ns: str, ports: Sequence[int] = PORTS) -> subprocess.Popen:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "cronos.lab.servers",
                "--ports", ",".join(map(str, ports))]  # fmt: skip
        proc = self.spawn(ns, argv, env=env)
        wait_listening(self, ns, ports, proc)
        return proc


def wait_listening(
    ctx: LabContext, ns: str, ports: Sequence[int], proc: subprocess.Popen | None = None
) -> None:
    """Poll ``ss -ltn`` in ``ns`` until every port listens."""
    deadline = time.monotonic() + _LISTEN_TIMEOUT_S
    want = set(ports)
    while True:
        out = ctx.ns_exec(ns, "ss", "-Hltn").stdout
        listening = {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()
                     if len(line.split()) >= 4}  # fmt: skip
        if want <= listening:
            return
        if proc is not None and proc.poll() is not None:
            raise LabError(f"server in {ns} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise LabError(f"ports {sorted(want - listening)} not listening in {ns}")
        time.sleep(0.05)


def run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a program; failures become ``DependencyError``/``LabError``."""
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, input=input, timeout=_RUN_TIMEOUT_S
        )
    except FileNotFoundError as exc:
        raise DependencyError(f"{cmd[0]} not found (needed by the lab)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)}: timed out") from exc
    if check and res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(f"{' '.join(cmd)}: {msg[-1] if msg else f'exit {res.returncode}'}")
    return res


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise DependencyError(f"the lab needs {', '.join(missing)} (not found in PATH)")
