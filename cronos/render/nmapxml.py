"""``-oX``: Cron-OS's results as nmap XML, valid against nmap's own ``nmap.dtd``.

Any tool that reads nmap XML (ndiff, python-libnmap, XSLT reports) reads ours.
Choices forced or allowed by the DTD (``/usr/share/nmap/nmap.dtd``, 7.93):

* ``<nmaprun scanner=...>`` only admits the value ``nmap``; the writer is named
  in ``profile_name="cron-os"`` and ``version`` is Cron-OS's.
* One ``<os>`` per host (readers such as python-libnmap keep only one):
  Cron-OS's guesses first, ``accuracy = round(confidence * 100)``,
  ``line`` = the line of the signature in its Cron-OS database file; then, if
  nmap ran, nmap's own osmatches with their names prefixed ``nmap: `` and
  nmap-os-db line numbers. ``<host comment=...>`` says so.
* ``<osfingerprint>`` (repeatable): first Cron-OS's ``CronOS_*`` lines joined by
  newlines, then nmap's own fingerprint if it printed one.
* Port states come from the observations (SYN-ACK: open, RST: closed, nothing:
  filtered) unless given; ports only nmap scanned are added with nmap's state.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..model import Observation, Status, fingerprint_lines, port_header
from ..net.nmap import NmapHost, OsClass, OsMatch

NMAP_PREFIX = "nmap: "
HOST_COMMENT = (
    "cron-os: osmatch = Cron-OS guesses (line = Cron-OS database line), then nmap's "
    "prefixed 'nmap: ' (line = nmap-os-db line); osfingerprint = CronOS_* lines, then nmap's"
)
_REASONS = {"open": "syn-ack", "closed": "reset", "filtered": "no-response"}


@dataclass(frozen=True)
class HostReport:
    """What ``write_nmap_xml`` needs about one target."""

    address: str
    observations: tuple[Observation, ...] = ()
    candidates: tuple[OsMatch, ...] = ()  # Cron-OS's guesses, best first
    ports: dict[int, str] = field(default_factory=dict)  # port -> state; derived if empty
    nmap: NmapHost | None = None
    status: str = "up"


def osmatches_from(result, top: int = 5) -> tuple[OsMatch, ...]:
    """Cron-OS's ``MatchResult`` candidates as OsMatch rows (empty on no match)."""
    if result is None or result.no_match:
        return ()
    out = []
    for c in result.shown[:top]:
        acc = round(c.confidence * 100)
        sig = c.signature
        classes = tuple(
            OsClass(k.vendor, k.family, k.generation or None, k.device_type or None, acc, sig.cpes)
            for k in sig.classes
            if k.vendor != "unknown"
        )
        out.append(OsMatch(c.name, acc, sig.line, classes))
    return tuple(out)


def port_states(observations) -> dict[int, str]:
    """nmap's port state per port, from what the probes saw."""
    seen: dict[int, set[Status]] = {}
    for o in observations:
        seen.setdefault(o.port, set()).add(o.status)
    out = {}
    for port, st in sorted(seen.items()):
        if st & {Status.OK, Status.RESET, Status.NO_CLOSE, Status.ABORTED}:
            out[port] = "open"
        elif Status.CLOSED in st:
            out[port] = "closed"
        else:
            out[port] = "filtered"
    return out


def cronos_lines(observations) -> list[str]:
    """The ``CronOS_*`` lines of a host: header, every OK state try, RST delays."""
    ok = [o for o in observations if o.status is Status.OK]
    feats = port_header([o.features for o in ok])
    return fingerprint_lines([o.fingerprint for o in ok], feats)


# --- XML -----------------------------------------------------------------------


def build_nmaprun(hosts: list[HostReport], *, args: str, start: float, end: float) -> ET.Element:
    run = ET.Element("nmaprun", {
        "scanner": "nmap",  # the DTD admits no other value
        "args": args,
        "start": str(int(start)),
        "startstr": time.ctime(start),
        "version": __version__,
        "profile_name": "cron-os",
        "xmloutputversion": "1.05",
    })  # fmt: skip
    ET.SubElement(run, "verbose", level="0")
    ET.SubElement(run, "debugging", level="0")
    for h in hosts:
        run.append(_host(h, start, end))
    up = sum(h.status == "up" for h in hosts)
    stats = ET.SubElement(run, "runstats")
    elapsed = max(0.0, end - start)
    ET.SubElement(stats, "finished", {
        "time": str(int(end)),
        "timestr": time.ctime(end),
        "elapsed": f"{elapsed:.2f}",
        "summary": f"Cron-OS done at {time.ctime(end)}; {len(hosts)} IP address(es) "
                   f"({up} host(s) up) scanned in {elapsed:.2f} seconds",
        "exit": "success",
    })  # fmt: skip
    ET.SubElement(stats, "hosts", up=str(up), down=str(len(hosts) - up), total=str(len(hosts)))
    return run


def to_xml(hosts: list[HostReport], *, args: str, start: float, end: float) -> str:
    run = build_nmaprun(hosts, args=args, start=start, end=end)
    ET.indent(run, space="")
    body = ET.tostring(run, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE nmaprun>\n' + body + "\n"


def write_nmap_xml(path, hosts: list[HostReport], *, args: str, start: float, end: float) -> None:
    """Write the XML to ``path`` (``-`` is not handled here: the CLI prints ``to_xml``)."""
    text = to_xml(hosts, args=args, start=start, end=end)
    p = Path(path)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)  # readers never see half a file


def _host(h: HostReport, start: float, end: float) -> ET.Element:
    el = ET.Element("host", starttime=str(int(start)), endtime=str(int(end)), comment=HOST_COMMENT)
    ET.SubElement(el, "status", state=h.status, reason="user-set", reason_ttl="0")
    ET.SubElement(el, "address", addr=h.address, addrtype="ipv6" if ":" in h.address else "ipv4")
    ttl = next((str(o.features.ttl) for o in h.observations if o.features), "0")
    states = dict(h.ports) or port_states(h.observations)
    if h.nmap is not None:
        for p in h.nmap.ports:
            if p.protocol == "tcp":
                states.setdefault(p.port, p.state)
    if states:
        ports = ET.SubElement(el, "ports")
        for port, state in sorted(states.items()):
            pe = ET.SubElement(ports, "port", protocol="tcp", portid=str(port))
            reason = _REASONS.get(state, "unknown")
            ET.SubElement(pe, "state", state=state, reason=reason,
                          reason_ttl=ttl if state == "open" else "0")  # fmt: skip
    el.append(_os(h, states))
    if h.nmap is not None and h.nmap.uptime_s is not None:
        up = {"seconds": str(h.nmap.uptime_s)}
        if h.nmap.lastboot:
            up["lastboot"] = h.nmap.lastboot
        ET.SubElement(el, "uptime", up)
    return el


def _os(h: HostReport, states: dict[int, str]) -> ET.Element:
    os_el = ET.Element("os")
    for port, state in sorted(states.items()):
        if state in ("open", "closed"):
            ET.SubElement(os_el, "portused", state=state, proto="tcp", portid=str(port))
    for m in h.candidates:
        os_el.append(_osmatch(m, ""))
    if h.nmap is not None:
        for m in h.nmap.osmatches:
            os_el.append(_osmatch(m, NMAP_PREFIX))
    lines = cronos_lines(h.observations)
    if lines:
        ET.SubElement(os_el, "osfingerprint", fingerprint="\n".join(lines))
    if h.nmap is not None and h.nmap.fingerprint:
        ET.SubElement(os_el, "osfingerprint", fingerprint=h.nmap.fingerprint)
    return os_el


def _osmatch(m: OsMatch, prefix: str) -> ET.Element:
    el = ET.Element("osmatch", name=prefix + m.name, accuracy=str(m.accuracy),
                    line=str(m.line if m.line is not None else 0))  # fmt: skip
    for c in m.classes:
        attrs = {"vendor": c.vendor, "osfamily": c.family or "unknown", "accuracy": str(c.accuracy)}
        if c.generation:
            attrs["osgen"] = c.generation
        if c.type:
            attrs["type"] = c.type
        ce = ET.SubElement(el, "osclass", attrs)
        for cpe in c.cpes:
            ET.SubElement(ce, "cpe").text = cpe
    return el
