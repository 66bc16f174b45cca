"""The merged report: nmap's view and Cron-OS's view side by side, then the verdict.

As on the talk's slides: nmap sees the box that answers the SYN, Cron-OS's
closing states see the host behind it; the ``Architecture:`` line says what
the two together mean. Plain text, at most ``WIDTH`` columns.
"""

from __future__ import annotations

import textwrap
from itertools import zip_longest

from ..analysis.architecture import ArchitectureVerdict
from ..net.nmap import NmapHost, family_of
from .nmapxml import cronos_lines

WIDTH = 100
GUTTER = " | "
COL = (WIDTH - len(GUTTER)) // 2  # 48 columns per view


def nmap_lines(nmap: NmapHost | None, top: int = 5) -> list[str]:
    """nmap's view in nmap's own words."""
    if nmap is None:
        return ["(nmap not run: add --nmap)"]
    out = [f"Host is {nmap.status}"]
    out += [f"{p.port}/{p.protocol} {p.state} {p.service or ''}".rstrip() for p in nmap.ports]
    if not nmap.osmatches:
        out.append("No OS matches for host")
    else:
        head = "OS details:" if nmap.exact else "Aggressive OS guesses:"
        out.append(head)
        for m in nmap.osmatches[:top]:
            fam = family_of(m)
            out.append(f"  {m.name} ({m.accuracy}%)" + (f" [{fam}]" if fam else ""))
        if len(nmap.osmatches) > top:
            out.append(f"  ... {len(nmap.osmatches) - top} more")
    if nmap.uptime_s is not None:
        out.append(f"Uptime guess: {nmap.uptime_s / 86400:.3f} days")
    if nmap.fingerprint:
        out.append("TCP/IP fingerprint:")
        out += nmap.fingerprint.strip().splitlines()
    return out


def cronos_view(observations, per_state: dict) -> list[str]:
    """Cron-OS's view: its fingerprint lines, then each state's guess (talk style)."""
    out = cronos_lines(observations)
    for m, r in per_state.items():
        where = m.state_name if m is not None else "all states"
        if r is None or r.no_match:
            out.append(f"{where}: no match")
        else:
            c = r.candidates[0]
            out.append(f"{where}: {r.verdict} ({c.tally}, {round(r.confidence * 100)}%)")
    return out


def _wrap(lines: list[str], width: int) -> list[str]:
    """Wrap each line to ``width``; fingerprint lines break after a ``%``."""
    out: list[str] = []
    for line in lines:
        indent = line[: len(line) - len(line.lstrip())]
        if " " not in line.strip() and "%" in line:
            line = line.replace("%", "% ")  # break points; removed below
            wrapped = textwrap.wrap(line, width + 1, subsequent_indent=indent + "  ",
                                    break_long_words=True)  # fmt: skip
            out += [w.replace("% ", "%") for w in wrapped]
            continue
        out += textwrap.wrap(line, width, subsequent_indent=indent + "  ",
                             break_long_words=True, break_on_hyphens=False) or [""]  # fmt: skip
    return out


def render_merged(
    host: str, nmap: NmapHost | None, cronos_lines: list[str], verdict: ArchitectureVerdict
) -> str:
    """Two columns ("nmap's view" / "Cron-OS's view"), then the architecture."""
    left = _wrap(nmap_lines(nmap), COL)
    right = _wrap(cronos_lines or ["(no Cron-OS result)"], COL)
    rows = [f"Host {host}", "", "nmap's view".ljust(COL) + GUTTER + "Cron-OS's view",
            f"{'-' * COL}{GUTTER}{'-' * COL}"]  # fmt: skip
    for a, b in zip_longest(left, right, fillvalue=""):
        rows.append(f"{a:<{COL}}{GUTTER}{b}".rstrip())
    rows.append("")
    rows += textwrap.wrap(f"Architecture: {verdict.summary} [{verdict.kind}]", WIDTH,
                          subsequent_indent="  ")  # fmt: skip
    for ev in verdict.evidence:
        rows += textwrap.wrap(ev, WIDTH, initial_indent="  - ", subsequent_indent="    ")
    return "\n".join(rows) + "\n"
