"""Read observations in any supported format, group them per target, match.

Input formats (detected from the first meaningful line):

* Cron-OS JSON Lines: one ``Observation.to_dict()`` object per line (what
  ``cron-os scan -oJ`` writes);
* fingerprint lines, as printed by Cron-OS or shown in the SSTIC 2003 talk:
  ``CronOS_Syn(...)``, ``CronOS_LastAck(...)``, ``CronOS_FinWait(...)``, with
  optional ``CronOS_Hdr(...)`` / ``CronOS_Rst(...)`` and ``Target NAME`` lines.
  A blank line ends a target; lines wrapped inside the parentheses (as on the
  talk's slides) are joined; other lines (``Fingerprint``, nmap's ``T1(...)``,
  comments) are ignored. Each state line is one try;
* Hershel / Hershel+ observation lines (CSV, as ``420OS_db.txt``): one line
  per try, grouped by their first column.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .db import Database
from .errors import FingerprintSyntaxError
from .match import NOVELTY, MatchResult, match
from .model import (
    Method,
    Observation,
    StateFingerprint,
    Status,
    SynAckFeatures,
    parse_hdr_line,
    parse_rst_line,
    parse_state_line,
)

_STATE_RE = re.compile(r"^(CronOS_(?:Syn|LastAck|FinWait|Hdr|Rst))\(")
_HERSHEL_RE = re.compile(r"^\d+\s*,")


@dataclass(frozen=True)
class TargetVerdict:
    target: str
    observations: tuple[Observation, ...]
    result: MatchResult


def read_observations(text: str, source: str = "<input>") -> list[Observation]:
    """Parse any supported input format; errors read ``source:line: reason``."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise FingerprintSyntaxError(f"{source}:1: no observation in input")
    if first.startswith("{"):
        return read_jsonl(text, source)
    if _HERSHEL_RE.match(first):
        return read_hershel(text, source)
    return read_fingerprint_lines(text, source)


def read_jsonl(text: str, source: str = "<input>") -> list[Observation]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FingerprintSyntaxError(f"{source}:{n}: not JSON: {exc.msg}") from exc
        if not isinstance(d, dict):
            raise FingerprintSyntaxError(f"{source}:{n}: expected a JSON object")
        if "method" not in d and "type" in d:  # other record kinds (summaries...)
            continue
        try:
            obs = Observation.from_dict(d)
        except FingerprintSyntaxError as exc:
            raise FingerprintSyntaxError(f"{source}:{n}: {exc}") from exc
        obs.extra["input_id"] = str(d["id"]) if "id" in d else f"{source}:{n}"
        out.append(obs)
    if not out:
        raise FingerprintSyntaxError(f"{source}:1: no observation record")
    return out


def read_fingerprint_lines(text: str, source: str = "<input>") -> list[Observation]:
    out: list[Observation] = []
    block = 0
    target = None
    feats: SynAckFeatures | None = None
    pending: list[tuple[int, StateFingerprint]] = []
    rsts: dict[Method, int] = {}

    def flush():
        nonlocal pending, rsts, feats, target, block
        block += 1
        name = target or (source if block == 1 else f"{source}#{block}")
        tries: dict[Method, int] = {}
        for n_line, fp in pending:
            if fp.method in rsts and fp.rst_us is None:
                fp = StateFingerprint(
                    fp.method, fp.time_s, fp.gaps_us, fp.connect_us, rsts[fp.method]
                )
            tries[fp.method] = tries.get(fp.method, 0) + 1
            out.append(
                Observation(
                    target=name,
                    port=0,
                    method=fp.method,
                    try_index=tries[fp.method],
                    status=Status.OK,
                    fingerprint=fp,
                    features=feats if fp.method is Method.SYN_RCVD else None,
                    extra={"input_id": f"{source}:{n_line}"},
                )
            )
        pending, rsts, feats, target = [], {}, None, None

    for n, line in _logical_lines(text, source):
        if not line:
            if pending:
                flush()
            continue
        if line.startswith("Target "):
            if pending:
                flush()
            target = line[7:].strip()
            continue
        m = _STATE_RE.match(line)
        if not m:
            continue  # Fingerprint, Class, nmap tests, prose: not ours
        try:
            kind = m.group(1)
            if kind == "CronOS_Hdr":
                feats = parse_hdr_line(line)
            elif kind == "CronOS_Rst":
                rsts.update(parse_rst_line(line))
            else:
                pending.append((n, parse_state_line(line)))
        except FingerprintSyntaxError as exc:
            raise FingerprintSyntaxError(f"{source}:{n}: {exc}") from exc
    if pending:
        flush()
    if not out:
        raise FingerprintSyntaxError(f"{source}:1: no CronOS_Syn/LastAck/FinWait line")
    return out


def _logical_lines(text: str, source: str) -> Iterable[tuple[int, str]]:
    """Strip comments; join lines wrapped inside parentheses; blank -> ''."""
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if buf:
            buf += line
            if buf.count("(") <= buf.count(")"):
                yield start, buf
                buf = ""
            continue
        if _STATE_RE.match(line) and line.count("(") > line.count(")"):
            buf, start = line, n
            continue
        yield n, line
    if buf:
        raise FingerprintSyntaxError(f"{source}:{start}: unterminated {buf.split('(')[0]}(...)")


def read_hershel(text: str, source: str = "<input>") -> list[Observation]:
    """Hershel CSV lines; the times are after the first SYN-ACK (a leading 0.0,
    as in the 116-stack file, is the first SYN-ACK itself). When rst_present=1
    the last time is the RST (see docs/database.md)."""
    out = []
    tries: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        f = [x.strip() for x in line.split(",")]
        try:
            if len(f) < 12:
                raise ValueError("fewer than 12 fields")
            times = [float(x) for x in f[12:] if x]
            if times and times[0] == 0.0:
                times = times[1:]
            opts = "" if f[4] == "X" else f[4]
            if not set(opts) <= set("MNWSTE"):
                raise ValueError(f"options {f[4]!r}")
            feats = SynAckFeatures(
                window=int(f[1]),
                ttl=int(f[2]),
                df=f[3] == "1",
                ip_id=None,
                mss=int(f[6]) if "M" in opts and f[6] not in ("", "0") else None,
                options=opts,
                wscale=None,
            )
            rst = f[7] == "1" and bool(times)
        except ValueError as exc:
            raise FingerprintSyntaxError(f"{source}:{n}: not a Hershel line: {exc}") from exc
        us = [round(t * 1e6) for t in times]
        cum = us[:-1] if rst else us
        gaps = tuple(b - a for a, b in zip([0, *cum], cum, strict=False))  # none: no retransmission
        rst_us = us[-1] - (cum[-1] if cum else 0) if rst else None
        time_s = max(60, math.ceil(2 * times[-1])) if times else 60
        target = f"hershel-{f[0]}"
        tries[target] = tries.get(target, 0) + 1
        fp = StateFingerprint(Method.SYN_RCVD, time_s, gaps, None, rst_us)
        out.append(Observation(target, 0, Method.SYN_RCVD, tries[target], Status.OK, fp, feats,
                               extra={"input_id": f"{source}:{n}"}))  # fmt: skip
    if not out:
        raise FingerprintSyntaxError(f"{source}:1: no Hershel line")
    return out


def classify(
    observations: Sequence[Observation], db: Database, *, top: int = 5, novelty: float = NOVELTY
) -> list[TargetVerdict]:
    """Group observations per target (first-seen order) and match each group."""
    groups: dict[str, list[Observation]] = {}
    for o in observations:
        groups.setdefault(o.target, []).append(o)
    return [TargetVerdict(t, tuple(obs), match(obs, db, top=top)) for t, obs in groups.items()]
