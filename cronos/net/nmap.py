"""The nmap adapter: the only module that runs nmap, and its XML parser.

One subprocess per batch of targets (model: nmap's own ``ndiff/ndiff.py``,
which reads ``-oX`` output into typed objects)::

    nmap -O --osscan-guess -Pn -n --max-os-tries 1 -p PORTS -oX - TARGETS

* ``-O --osscan-guess``: OS detection, and nmap's guesses even without an
  exact match (the talk's "Nokia M1122 DSL Router" was such a guess).
* ``-Pn``: no host discovery; lab hosts and filtered hosts may not answer pings.
* ``-n``: no DNS; targets are already addresses.
* ``--max-os-tries 1``: one OS-detection round instead of up to five; about
  1.5 s instead of 3.6 s per lab target, same guesses in the lab.
* ``-oX -``: XML on stdout; nothing is written to disk.

nmap's flows never meet Cron-OS's RST-dropping nft table: that table drops
RSTs only for (target, port, source port) of running Cron-OS probes, and nmap
picks its own source ports (see ``docs/nmap.md``).

The XML is parsed with ``defusedxml`` with DTDs, entity declarations and
external references all refused; the one exception is the bare
``<!DOCTYPE nmaprun>`` line nmap itself writes, which declares nothing and is
removed before parsing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from ..errors import DependencyError

DEFAULT_ARGS = ("-O", "--osscan-guess", "-Pn", "-n", "--max-os-tries", "1")
# nmap's "embedded" and the like say little about the stack; a concrete
# family (Linux, Windows...) wins when one osmatch lists both.
VAGUE_FAMILIES = frozenset({"", "embedded", "unknown"})
_BARE_DOCTYPE = re.compile(r"<!DOCTYPE\s+nmaprun\s*>")


@dataclass(frozen=True)
class OsClass:
    """``<osclass>``: one classification of an osmatch."""

    vendor: str
    family: str
    generation: str | None
    type: str | None
    accuracy: int
    cpes: tuple[str, ...] = ()


@dataclass(frozen=True)
class OsMatch:
    """``<osmatch>``: one of nmap's guesses; ``line`` is its nmap-os-db line."""

    name: str
    accuracy: int
    line: int | None
    classes: tuple[OsClass, ...] = ()


@dataclass(frozen=True)
class NmapPort:
    port: int
    protocol: str
    state: str  # open, closed, filtered, open|filtered, ...
    service: str | None = None


@dataclass(frozen=True)
class NmapHost:
    """One ``<host>`` of nmap's output, osmatches best first."""

    address: str
    status: str  # up, down, unknown, skipped
    ports: tuple[NmapPort, ...] = ()
    osmatches: tuple[OsMatch, ...] = ()
    fingerprint: str | None = None  # <osfingerprint fingerprint=...>
    uptime_s: int | None = None
    lastboot: str | None = None

    @property
    def exact(self) -> bool:
        """nmap found an exact (100%) match."""
        return any(m.accuracy == 100 for m in self.osmatches)

    @property
    def best(self) -> OsMatch | None:
        return self.osmatches[0] if self.osmatches else None

    def top_families(self) -> frozenset[str]:
        """Families of every osmatch tied at the best accuracy."""
        if not self.osmatches:
            return frozenset()
        top = max(m.accuracy for m in self.osmatches)
        fams = (family_of(m) for m in self.osmatches if m.accuracy == top)
        return frozenset(f for f in fams if f)

    def port_state(self, port: int, protocol: str = "tcp") -> str | None:
        for p in self.ports:
            if p.port == port and p.protocol == protocol:
                return p.state
        return None


def family_of(osmatch: OsMatch) -> str | None:
    """The osmatch's family: a concrete one if any class has it, else the most frequent."""
    fams = [c.family for c in osmatch.classes if c.family]
    if not fams:
        return None
    concrete = [f for f in fams if f.lower() not in VAGUE_FAMILIES]
    return Counter(concrete or fams).most_common(1)[0][0]


# --- running -----------------------------------------------------------------


def nmap_command(
    targets: Sequence[str], ports: Sequence[int], extra_args: Sequence[str] = (),
    netns: str | None = None,
) -> list[str]:  # fmt: skip
    """The argv ``run_nmap`` executes (exposed for ``--dry-run`` and tests)."""
    nmap = shutil.which("nmap") or "nmap"
    argv = [nmap, *DEFAULT_ARGS, *extra_args]
    argv += ["-p", ",".join(str(p) for p in ports), "-oX", "-", "--", *targets]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def run_nmap(
    targets: list[str],
    ports: list[int],
    *,
    extra_args: Sequence[str] = (),
    timeout_s: float = 600,
    netns: str | None = None,
) -> dict[str, NmapHost]:
    """Run nmap for every target, once per address family (``nmap -6`` for
    the IPv6 ones: nmap scans one family per run); {address: NmapHost}, a
    link-local target under its zoned spelling too.

    Raises ``DependencyError`` (one-line cause) if nmap is missing, fails,
    times out or prints something that is not nmap XML.
    """
    if not targets:
        return {}
    if shutil.which("nmap") is None:
        raise DependencyError("nmap is not installed (apt install nmap)")
    if netns and shutil.which("ip") is None:
        raise DependencyError("ip (iproute2) is not installed (apt install iproute2)")
    v4 = [t for t in targets if ":" not in t]
    v6 = [t for t in targets if ":" in t]
    hosts: dict[str, NmapHost] = {}
    for group, flag in ((v4, ()), (v6, ("-6",))):
        if group:
            hosts.update(_run_once(group, ports, (*flag, *extra_args), timeout_s, netns))
    for t in v6:
        base = t.partition("%")[0]
        if base != t and base in hosts:
            hosts[t] = hosts[base]
    return hosts


def _run_once(
    targets: list[str], ports: list[int], extra_args: Sequence[str], timeout_s: float,
    netns: str | None,
) -> dict[str, NmapHost]:  # fmt: skip
    argv = nmap_command(targets, ports, extra_args, netns)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DependencyError(f"nmap did not finish within {timeout_s:g} s") from exc
    except OSError as exc:
        raise DependencyError(f"cannot run nmap: {exc}") from exc
    if out.returncode != 0:
        raise DependencyError(f"nmap failed (exit {out.returncode}): {_first_line(out.stderr)}")
    return parse_nmap_xml(out.stdout)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


# --- parsing -----------------------------------------------------------------


def parse_nmap_xml(text: str) -> dict[str, NmapHost]:
    """Parse nmap's ``-oX`` output; {address: NmapHost} in document order."""
    try:
        root = SafeET.fromstring(
            _BARE_DOCTYPE.sub("", text, count=1),
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
        )
    except DefusedXmlException as exc:
        raise DependencyError(f"nmap XML refused: {type(exc).__name__}") from exc
    except SafeET.ParseError as exc:
        raise DependencyError(f"nmap output is not valid XML: {exc}") from exc
    if root.tag != "nmaprun":
        raise DependencyError(f"not nmap XML: root element <{root.tag}>")
    finished = root.find("runstats/finished")
    if finished is not None and finished.get("exit") == "error":
        raise DependencyError(f"nmap error: {finished.get('errormsg', 'unknown')}")
    hosts = [_host(h) for h in root.iter("host")]
    return {h.address: h for h in hosts}


def _host(el) -> NmapHost:
    addrs = [a for a in el.findall("address") if a.get("addrtype", "ipv4") != "mac"]
    if not addrs:
        raise DependencyError("nmap XML: <host> without an IP <address>")
    status = el.find("status")
    uptime = el.find("uptime")
    fps = [f.get("fingerprint", "") for f in el.findall("os/osfingerprint")]
    matches = sorted((_osmatch(m) for m in el.findall("os/osmatch")), key=lambda m: -m.accuracy)
    return NmapHost(
        address=addrs[0].get("addr", ""),
        status=status.get("state", "unknown") if status is not None else "unknown",
        ports=tuple(_port(p) for p in el.findall("ports/port")),
        osmatches=tuple(matches),  # stable sort: nmap's order within one accuracy
        fingerprint="\n".join(fps) if fps else None,
        uptime_s=_int_or_none(uptime.get("seconds")) if uptime is not None else None,
        lastboot=uptime.get("lastboot") if uptime is not None else None,
    )


def _port(el) -> NmapPort:
    state = el.find("state")
    service = el.find("service")
    return NmapPort(
        port=_int(el.get("portid"), "portid"),
        protocol=el.get("protocol", "tcp"),
        state=state.get("state", "unknown") if state is not None else "unknown",
        service=service.get("name") if service is not None else None,
    )


def _osmatch(el) -> OsMatch:
    return OsMatch(
        name=el.get("name", ""),
        accuracy=_int(el.get("accuracy"), "accuracy"),
        line=_int_or_none(el.get("line")),
        classes=tuple(_osclass(c) for c in el.findall("osclass")),
    )


def _osclass(el) -> OsClass:
    return OsClass(
        vendor=el.get("vendor", ""),
        family=el.get("osfamily", ""),
        generation=el.get("osgen"),
        type=el.get("type"),
        accuracy=_int(el.get("accuracy"), "accuracy"),
        cpes=tuple((c.text or "").strip() for c in el.findall("cpe")),
    )


def _int(value: str | None, what: str) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise DependencyError(f"nmap XML: {what}={value!r} is not an integer") from None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None
