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

import itertools
import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from .. import interrupts
from ..errors import FingerprintSyntaxError
from ..model import (
    Method,
    Observation,
    StateFingerprint,
    Status,
    SynAckFeatures,
    parse_hdr_line,
    parse_rst_line,
    parse_state_line,
)
from .db import Database
from .match import PathModel
from .verdict import Verdict, by_target, decide

_STATE_RE = re.compile(r"^(CronOS_(?:Syn|LastAck|FinWait|Hdr|Rst))\(")
_HERSHEL_RE = re.compile(r"^\d+\s*,")
LISTEN_HERSHEL_S = 120.0
LAYOUT_LINES = 10_000  # Hershel lines read to settle the file's layout
#: Streaming: targets whose observations may still come; beyond this many, the
#: oldest one is matched as it is (a target whose lines lie further apart in
#: the input gets one verdict per part).
OPEN_TARGETS = 10_000


#: what ``classify`` gives per target (``cronos.analysis.verdict``, the one verdict path)
TargetVerdict = Verdict


def read_observations(text: str, source: str = "<input>") -> list[Observation]:
    """Parse any supported input format; errors read ``source:line: reason``."""
    return [o for o in iter_observations(text.splitlines(), source) if isinstance(o, Observation)]


@dataclass(frozen=True)
class TargetEnd:
    """In a stream of observations: this target has no more (a scan's verdict
    record for it was read)."""

    target: str


def iter_observations(lines: Iterable[str], source: str = "<input>") -> Iterator:
    """Observations (and ``TargetEnd`` marks) from an iterable of lines, as
    they are read: the format is detected from the first meaningful line."""
    it = iter(lines)
    head = []
    for line in it:
        head.append(line)
        if line.strip():
            break
    first = head[-1].strip() if head else ""
    if not first:
        raise FingerprintSyntaxError(f"{source}:1: no observation in input")
    lines = itertools.chain(head, it)
    if first.startswith("{"):
        return _iter_jsonl(lines, source)
    if _HERSHEL_RE.match(first):
        return _iter_hershel(lines, source)
    return _iter_fingerprint_lines(lines, source)


def read_jsonl(text: str, source: str = "<input>") -> list[Observation]:
    return [o for o in _iter_jsonl(text.splitlines(), source) if isinstance(o, Observation)]


def _iter_jsonl(lines: Iterable[str], source: str) -> Iterator:
    seen = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FingerprintSyntaxError(f"{source}:{n}: not JSON: {exc.msg}") from exc
        if not isinstance(d, dict):
            raise FingerprintSyntaxError(f"{source}:{n}: expected a JSON object")
        if "method" not in d and "type" in d:  # other record kinds (summaries...)
            if d.get("type") == "verdict" and isinstance(d.get("target"), str):
                yield TargetEnd(d["target"])
            continue
        try:
            obs = Observation.from_dict(d)
        except FingerprintSyntaxError as exc:
            raise FingerprintSyntaxError(f"{source}:{n}: {exc}") from exc
        seen = True
        yield replace(obs, input_id=str(d["id"]) if "id" in d else f"{source}:{n}")
    if not seen:
        raise FingerprintSyntaxError(f"{source}:1: no observation record")


def read_fingerprint_lines(text: str, source: str = "<input>") -> list[Observation]:
    return list(_iter_fingerprint_lines(text.splitlines(), source))


def _iter_fingerprint_lines(lines: Iterable[str], source: str) -> Iterator[Observation]:
    out: list[Observation] = []
    seen = False
    block = 0
    target = None
    feats: SynAckFeatures | None = None
    pending: list[tuple[int, StateFingerprint]] = []
    rsts: dict[Method, tuple[int | None, ...]] = {}

    def flush():
        nonlocal pending, rsts, feats, target, block
        block += 1
        name = target or (source if block == 1 else f"{source}#{block}")
        tries: dict[Method, int] = {}
        for n_line, fp in pending:
            k = tries.get(fp.method, 0)
            values = rsts.get(fp.method, ())
            # one delay per state line, in order; a single one (older reports,
            # a database block) is every line's
            us = values[0] if len(values) == 1 else values[k] if k < len(values) else None
            if us is not None and fp.rst_us is None:
                fp = StateFingerprint(fp.method, fp.time_s, fp.gaps_us, fp.connect_us, us)
            tries[fp.method] = k + 1
            out.append(
                Observation(
                    target=name,
                    port=0,
                    method=fp.method,
                    try_index=tries[fp.method],
                    status=Status.OK,
                    fingerprint=fp,
                    features=feats if fp.method is Method.SYN_RCVD else None,
                    input_id=f"{source}:{n_line}",
                )
            )
        pending, rsts, feats, target = [], {}, None, None

    for n, line in _logical_lines(lines, source):
        if not line:
            if pending:
                flush()
                yield from out
                out.clear()
                seen = True
            continue
        if line.startswith("Target "):
            if pending:
                flush()
                yield from out
                out.clear()
                seen = True
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
    if out:
        yield from out
        seen = True
    if not seen:
        raise FingerprintSyntaxError(f"{source}:1: no CronOS_Syn/LastAck/FinWait line")
    return out


def _logical_lines(lines: Iterable[str], source: str) -> Iterable[tuple[int, str]]:
    """Strip comments; join lines wrapped inside parentheses; blank -> ''."""
    buf, start = "", 0
    for n, raw in enumerate(lines, 1):
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


#: a Hershel time beyond a day after the SYN is not a measurement
MAX_TIME_S = 86_400


def read_hershel(text: str, source: str = "<input>") -> list[Observation]:
    return list(_iter_hershel(text.splitlines(), source))


def _iter_hershel(lines: Iterable[str], source: str) -> Iterator[Observation]:
    """Hershel / Hershel+ CSV lines, database or observation files alike.

    After the header and RST fields (11 of them in the Hershel+ format, 12 in
    the Hershel one, which adds ``rst_seq``) come the arrival times in seconds,
    all measured from the SYN: the first is the first SYN-ACK's (its RTT; 0 in
    the database files, whose times start at the first SYN-ACK), then each
    retransmission, then the RST when ``rst_present=1`` (see
    docs/database.md); the SYN-ACKs' times may be listed in any order (they are
    sorted). Every time is re-based on the first SYN-ACK; the RTT is
    kept as the first arrival. Lines with the same first column are tries at
    one target (the live fingerprinter numbers its targets). A line that could
    be either layout follows the file's first LAYOUT_LINES lines."""
    numbered = ((n, line) for n, line in enumerate(lines, 1) if line.strip())
    head = list(itertools.islice(numbered, LAYOUT_LINES))
    default = _file_layout((n, _fields(line)) for n, line in head)
    seen = False
    tries: dict[str, int] = {}
    last_target = None
    for n, line in itertools.chain(head, numbered):
        f = _fields(line)
        skip = _hershel_layout(f, default)
        try:
            if len(f) < skip:
                raise ValueError(f"fewer than {skip} fields")
            times = [float(x) for x in f[skip:] if x]
            if any(not math.isfinite(t) or t < 0 or t > MAX_TIME_S for t in times):
                raise ValueError(f"times must be 0 to {MAX_TIME_S} s")
            for name, k, top in (("window", 1, 65535), ("TTL", 2, 255), ("MSS", 6, 65535)):
                if f[k] and not 0 <= int(f[k]) <= top:
                    raise ValueError(f"{name} {f[k]} out of range 0..{top}")
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
        except ValueError as exc:
            raise FingerprintSyntaxError(f"{source}:{n}: not a Hershel line: {exc}") from exc
        rst = f[7] == "1" and len(times) > 1
        # the SYN-ACKs in arrival order (a simulator may list them as sent,
        # each with its own delay: the copies are alike, their order is the
        # path's); an RST overtaking the last SYN-ACK comes 0 s after it
        synacks = sorted(times[:-1] if rst else times)
        if rst:
            synacks.append(max(times[-1], synacks[-1]))
        rtt = synacks[0] if synacks else 0.0
        rel = [t - rtt for t in synacks[1:]]
        us = [round(t * 1e6) for t in rel]
        cum = us[:-1] if rst else us
        gaps = tuple(b - a for a, b in zip([0, *cum], cum, strict=False))  # none: no retransmission
        rst_us = us[-1] - (cum[-1] if cum else 0) if rst else None
        # Hershel+'s live fingerprinter listens 120 s after the SYN
        listened = max(LISTEN_HERSHEL_S - rtt, rel[-1] if rel else 0.0)
        time_s = math.ceil(listened + rtt)
        target = f"hershel-{f[0]}"
        if target != last_target:  # tries at one target are consecutive lines
            tries.pop(last_target, None)
            last_target = target
        tries[target] = tries.get(target, 0) + 1
        fp = StateFingerprint(Method.SYN_RCVD, time_s, gaps, None, rst_us,
                              listened_us=round(listened * 1e6) + 50_000)  # fmt: skip
        a0 = round(rtt * 1e6)
        arrivals = (a0, *(a0 + c for c in cum)) if rtt > 0 else ()
        seen = True
        yield Observation(target, 0, Method.SYN_RCVD, tries[target], Status.OK, fp, feats,
                          arrivals_us=arrivals, input_id=f"{source}:{n}")  # fmt: skip
    if not seen:
        raise FingerprintSyntaxError(f"{source}:1: no Hershel line")


def _fields(line: str) -> list[str]:
    return [x.strip() for x in line.split(",")]


def _hershel_layout(f: list[str], file_default: int) -> int:
    """Index of the first time in one line: 11 (Hershel+, 420-stack format) or
    12 (Hershel, 116-stack format, with rst_seq). A decimal point in field 11
    is a time (Hershel+); field 11 a 1, or an integer followed by a zero time,
    is Hershel's rst_nonzero. A line that could be either (field 11 "0", a
    positive time after it) follows the file: Hershel+ unless every line that
    tells says Hershel and its field 12 looks like an RTT (under 1 s)."""
    if len(f) < 12:
        return 11
    if "." in f[11] or "e" in f[11].lower():
        return 11
    if f[11] == "1" or (len(f) > 12 and _zero(f[12])):
        return 12
    if file_default == 12 and len(f) > 12 and _num(f[12]) < 1.0:
        return 12
    return 11


def _file_layout(rows) -> int:
    says = set()
    for _n, f in rows:
        if len(f) >= 12 and ("." in f[11] or "e" in f[11].lower()):
            says.add(11)
        elif len(f) >= 12 and (f[11] == "1" or (len(f) > 12 and _zero(f[12]))):
            says.add(12)
    return 12 if says == {12} else 11


def _num(x: str) -> float:
    try:
        return float(x)
    except ValueError:
        return math.inf


def _zero(x: str) -> bool:
    try:
        return float(x) == 0.0
    except ValueError:
        return False


group_targets = by_target  # observations per target, in first-seen order


def iter_groups(items: Iterable, open_targets: int = OPEN_TARGETS) -> Iterator[tuple]:
    """(target, observations) in first-seen order, each as soon as it is
    complete: at its ``TargetEnd``, when ``open_targets`` later targets have
    started, or at the end of the input. Memory: the open targets only."""
    groups: OrderedDict[str, list[Observation]] = OrderedDict()
    done: set[str] = set()
    for it in items:
        if isinstance(it, TargetEnd):
            if it.target in groups:
                done.add(it.target)
        else:
            groups.setdefault(it.target, []).append(it)
        while groups:
            head = next(iter(groups))
            if head not in done and len(groups) <= open_targets:
                break
            done.discard(head)
            yield head, groups.pop(head)
    while groups:
        yield groups.popitem(last=False)


def classify_stream(
    items: Iterable,
    db: Database,
    *,
    top: int = 5,
    model: PathModel | None = None,
    architecture: bool = False,
) -> Iterator[Verdict]:
    """``classify`` for a stream of observations (``iter_observations``)."""
    for t, obs in iter_groups(items):
        interrupts.check()  # a signal Python could not raise where it came
        yield decide(t, obs, db, top=top, model=model, architecture=architecture)


def classify(
    observations: Sequence[Observation],
    db: Database,
    *,
    top: int = 5,
    model: PathModel | None = None,
    architecture: bool = False,
) -> list[Verdict]:
    """Group observations per target (first-seen order) and decide each group."""
    return [decide(t, obs, db, top=top, model=model, architecture=architecture)
            for t, obs in by_target(observations).items()]  # fmt: skip
