"""The reference database: text format, strict loader, block writer.

One block per signature, blank-line separated, ``#`` starts a comment (in the
spirit of p0f's ``p0f.fp`` and nmap-os-db)::

    Fingerprint Windows 2008 SP1/SP2/R2
    Class Microsoft | Windows | 2008 | general purpose
    CPE cpe:/o:microsoft:windows_server_2008
    Source hershel HershelDB_116OS.txt id=2 (50 samples)
    CronOS_Hdr(W=2000%TTL=128%DF=Y%ID=%MSS=1460%O=MNWST%WS=)
    CronOS_Syn(nbPkt=2%Time=60%p=2988000%p=6000000)
    CronOS_Rst(Syn=12000000)
    Spread Syn=3000,3500 SynRst=3600

The state lines use exactly the scanner's syntax (``cronos.model``). The
loader reports every error as ``file:line: reason`` and rejects duplicate
names and duplicate signatures ("already covered by line N"). Field-by-field
documentation: ``docs/database.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import DatabaseError, FingerprintSyntaxError
from ..model import (
    Method,
    StateFingerprint,
    SynAckFeatures,
    fingerprint_lines,
    parse_hdr_line,
    parse_rst_line,
    parse_state_line,
)
from ..textfile import NotText, read_text

MAX_LINE = 4096
_STATE_PREFIXES = tuple(m.line_name + "(" for m in Method)
_SPREAD_KEYS = (
    {m.rst_key: (m, "gaps") for m in Method}
    | {m.rst_key + "Rst": (m, "rst") for m in Method}
    | {m.rst_key + "Offset": (m, "offset") for m in Method}
    | {m.rst_key + "Slip": (m, "slip") for m in Method}
)


@dataclass(frozen=True)
class OsClass:
    """``Class vendor | family | generation | device type`` (nmap-os-db style)."""

    vendor: str
    family: str
    generation: str = ""
    device_type: str = ""

    def line(self) -> str:
        if self.vendor == "unknown" and not self.family:
            return "Class unknown"
        return f"Class {self.vendor} | {self.family} | {self.generation} | {self.device_type}"


UNKNOWN_CLASS = OsClass("unknown", "")


@dataclass(frozen=True)
class Signature:
    """One database block.

    ``offset_spread_us[method]``: spread (robust standard deviation) of a
    common shift of the whole series relative to the first packet (the first
    packet's own lateness). ``spread_us[method]``: one value per ``p=`` gap,
    the remaining spread of that retransmission's arrival time once the shift
    is removed; ``rst_spread_us`` likewise for the final RST.
    ``offset_slip_us[method]``: ``(lo, hi, percent)``: in ``percent`` % of the
    examples the shift fell outside its spread, anywhere from ``lo`` to ``hi``
    (a coarse timer whose first expiry slips by a tick or more)."""

    name: str
    classes: tuple[OsClass, ...]
    cpes: tuple[str, ...]
    sources: tuple[str, ...]
    features: SynAckFeatures | None
    states: dict[Method, StateFingerprint]
    spread_us: dict[Method, tuple[int, ...]] = field(default_factory=dict)
    rst_spread_us: dict[Method, int] = field(default_factory=dict)
    offset_spread_us: dict[Method, int] = field(default_factory=dict)
    file: str = "<memory>"
    line: int = 0
    #: a variant of a ``Law`` block (``cronos.analysis.laws``): the block's
    #: name, the law, its parameter values, and its share of the block's prior
    law_block: str = ""
    law: str = ""
    params: tuple[tuple[str, str], ...] = ()
    weight: float = 1.0
    law_text: str = ""  # the block's Law line, as written
    #: ``Ttl N``: the initial TTL a block without a ``CronOS_Hdr`` line
    #: documents (its other header fields unknown)
    init_ttl: int | None = None
    offset_slip_us: dict[Method, tuple[int, int, int]] = field(default_factory=dict)
    #: the stack's IPv6 SYN-ACK header, for a block with a ``CronOS_Hdr`` line
    #: of each family (``features`` is then the IPv4 one); an IPv6
    #: observation is compared with it, else with ``features`` as over IPv4
    features6: SynAckFeatures | None = None

    def header_for(self, v6: bool) -> SynAckFeatures | None:
        """The header an observation of that family is compared with."""
        return self.features6 if v6 and self.features6 is not None else self.features

    def law_block_text(self) -> str:
        """A variant's block as written: its lines with the Law line, no states."""
        lines = [f"Fingerprint {self.law_block}"]
        lines += [c.line() for c in self.classes]
        lines += [f"CPE {c}" for c in self.cpes]
        lines += [f"Source {s}" for s in self.sources]
        if self.features is not None:
            lines.append(self.features.line())
        if self.features6 is not None:
            lines.append(self.features6.line())
        if self.init_ttl is not None:
            lines.append(f"Ttl {self.init_ttl}")
        lines.append(f"Law {self.law_text}")
        return "\n".join(lines) + "\n"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def family(self) -> str:
        """The family if every Class line agrees on one, else ""."""
        fams = {c.family for c in self.classes if c.family}
        return next(iter(fams)) if len(fams) == 1 else ""

    def key(self) -> tuple:
        """What makes two signatures identical (features and timings)."""
        states = tuple(sorted(self.states.items(), key=lambda kv: kv[0].value))
        return (self.features, self.features6, self.init_ttl, states)

    def block(self) -> str:
        """The block in the database's own syntax, ready to paste (a law's
        variant as the fixed signature it is)."""
        lines = [f"Fingerprint {self.name}"]
        lines += [c.line() for c in self.classes]
        lines += [f"CPE {c}" for c in self.cpes]
        lines += [f"Source {s}" for s in self.sources]
        if self.init_ttl is not None:
            lines.append(f"Ttl {self.init_ttl}")
        lines += fingerprint_lines(list(self.states.values()), self.features)
        if self.features6 is not None:  # after the IPv4 header line
            lines.insert(lines.index(self.features.line()) + 1, self.features6.line())
        spread = [f"{m.rst_key}={','.join(map(str, v))}" for m, v in self.spread_us.items() if v]
        spread += [f"{m.rst_key}Rst={v}" for m, v in self.rst_spread_us.items()]
        spread += [f"{m.rst_key}Offset={v}" for m, v in self.offset_spread_us.items()]
        spread += [
            f"{m.rst_key}Slip={','.join(map(str, v))}" for m, v in self.offset_slip_us.items()
        ]
        if spread:
            lines.append("Spread " + " ".join(spread))
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Database:
    signatures: tuple[Signature, ...]
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.signatures)

    def with_method(self, method: Method) -> list[int]:
        return [i for i, s in enumerate(self.signatures) if method in s.states]


# --- loading -----------------------------------------------------------------


def builtin_paths() -> list[Path]:
    """Every ``*.db`` file shipped in ``cronos/data``, sorted."""
    root = resources.files("cronos") / "data"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".db"))


def load_db(paths: list[Path] | None = None, *, builtin: bool = True) -> Database:
    """Built-in database plus ``paths`` (users' ``--db FILE`` adds to it)."""
    files = (builtin_paths() if builtin else []) + [Path(p) for p in paths or []]
    sigs: list[Signature] = []
    seen_names: dict[str, str] = {}
    seen_keys: dict[tuple, str] = {}
    shipped = set(builtin_paths()) if builtin else set()
    for path in files:
        # built-in files are named as in the source tree, not by this machine's path
        name = f"cronos/data/{path.name}" if path in shipped else str(path)
        for sig in parse_db_text(_read(path), name):
            if sig.law_block:  # a law's variants are distinct by construction
                prev = seen_names.get(sig.law_block)
                if prev is not None and prev != sig.where:
                    raise DatabaseError(
                        f"{sig.where}: duplicate name {sig.law_block!r}, already at {prev}"
                    )
                seen_names[sig.law_block] = sig.where
                sigs.append(sig)
                continue
            if sig.name in seen_names:
                raise DatabaseError(
                    f"{sig.where}: duplicate name {sig.name!r}, already at {seen_names[sig.name]}"
                )
            k = sig.key()
            if k in seen_keys:
                raise DatabaseError(
                    f"{sig.where}: signature already covered by line {seen_keys[k]}"
                )
            seen_names[sig.name] = sig.where
            seen_keys[k] = sig.where
            sigs.append(sig)
    return Database(tuple(sigs), tuple(str(p) for p in files))


def _read(path: Path) -> str:
    try:
        text = read_text(path)
    except OSError as exc:
        raise DatabaseError(f"{path}:0: cannot read: {exc.strerror or exc}") from exc
    except NotText as exc:
        if exc.binary:
            raise DatabaseError(
                f"{path}:1: binary content (NUL byte), not a signature file"
            ) from exc
        raise DatabaseError(f"{path}:{exc.line}: not UTF-8 text") from exc
    if not text.strip():
        raise DatabaseError(f"{path}:1: empty file")
    return text


def parse_db_text(text: str, filename: str = "<string>") -> list[Signature]:
    """Parse one file's text into signatures (no cross-file checks); a ``Law``
    block gives one signature per variant."""
    out: list[Signature] = []
    block: list[tuple[int, str]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if len(raw) > MAX_LINE:
            raise DatabaseError(f"{filename}:{n}: line longer than {MAX_LINE} characters")
        line = raw.split("#", 1)[0].strip()
        if not line:
            if not raw.strip() and block:  # a blank line ends a block; comments do not
                out += _parse_block(block, filename)
                block = []
            continue
        block.append((n, line))
    if block:
        out += _parse_block(block, filename)
    return out


def _parse_block(block: list[tuple[int, str]], fn: str) -> list[Signature]:
    first_no, first = block[0]
    if not first.startswith("Fingerprint "):
        raise DatabaseError(f"{fn}:{first_no}: a block must start with 'Fingerprint NAME'")
    name = first[len("Fingerprint ") :].strip()
    if not name:
        raise DatabaseError(f"{fn}:{first_no}: empty Fingerprint name")
    classes: list[OsClass] = []
    cpes: list[str] = []
    sources: list[str] = []
    features: SynAckFeatures | None = None
    features6: SynAckFeatures | None = None
    states: dict[Method, StateFingerprint] = {}
    rsts: dict[Method, int] = {}
    spread: dict[Method, tuple[int, ...]] = {}
    rst_spread: dict[Method, int] = {}
    offset_spread: dict[Method, int] = {}
    slip: dict[Method, tuple[int, int, int]] = {}
    spread_line = 0
    law_line: tuple[int, str] | None = None
    init_ttl: int | None = None
    for n, line in block[1:]:
        where = f"{fn}:{n}"
        try:
            if line.startswith("Fingerprint "):
                raise DatabaseError(f"{where}: new Fingerprint without a blank line before it")
            if line.startswith("Law "):
                if law_line is not None:
                    raise DatabaseError(f"{where}: second Law line in block")
                law_line = (n, line[4:].strip())
                continue
            if line.startswith("Class "):
                classes.append(parse_class(line[6:], where))
            elif line.startswith("CPE "):
                cpe = line[4:].strip()
                if not cpe.startswith(("cpe:/", "cpe:2.3:")):
                    raise DatabaseError(f"{where}: CPE must start with cpe:/ or cpe:2.3:")
                cpes.append(cpe)
            elif line.startswith("Source "):
                sources.append(line[7:].strip())
            elif line.startswith("CronOS_Hdr("):
                hdr = parse_hdr_line(line)
                if features is None:
                    features = hdr
                elif features6 is not None or features.v6 == hdr.v6:
                    raise DatabaseError(
                        f"{where}: second CronOS_Hdr line in block (one per family at most)"
                    )
                else:  # one of each family: the IPv4 one is the block's header
                    features, features6 = (hdr, features) if features.v6 else (features, hdr)
            elif line.startswith(_STATE_PREFIXES):
                fp = parse_state_line(line)
                if fp.method in states:
                    raise DatabaseError(f"{where}: second {fp.method.line_name} line in block")
                states[fp.method] = fp
            elif line.startswith("CronOS_Rst("):
                if rsts:
                    raise DatabaseError(f"{where}: second CronOS_Rst line in block")
                rsts = parse_rst_line(line)
            elif line.startswith("Ttl "):
                if init_ttl is not None:
                    raise DatabaseError(f"{where}: second Ttl line in block")
                init_ttl = _parse_ttl(line[4:], where)
            elif line.startswith("Spread "):
                if spread_line:
                    raise DatabaseError(f"{where}: second Spread line in block")
                spread_line = n
                spread, rst_spread, offset_spread, slip = _parse_spread(line[7:], where)
            else:
                raise DatabaseError(f"{where}: unknown line {line.split('(')[0][:40]!r}")
        except FingerprintSyntaxError as exc:
            raise DatabaseError(f"{where}: {exc}") from exc
    where = f"{fn}:{first_no}"
    if not sources:
        raise DatabaseError(f"{where}: block {name!r} has no Source line")
    if not classes:
        raise DatabaseError(f"{where}: block {name!r} has no Class line")
    if init_ttl is not None and features is not None:
        raise DatabaseError(f"{where}: block {name!r} has both CronOS_Hdr and Ttl (Hdr has TTL=)")
    if law_line is not None:
        if states or rsts or spread_line:
            raise DatabaseError(
                f"{where}: block {name!r} has a Law line: its law writes the state lines"
            )
        return _law_variants(
            name, classes, cpes, sources, features, law_line, fn, first_no, init_ttl, features6
        )
    if not states:
        raise DatabaseError(f"{where}: block {name!r} has no CronOS_Syn/LastAck/FinWait line")
    for m, values in rsts.items():
        if m not in states:
            raise DatabaseError(f"{where}: CronOS_Rst gives {m.rst_key} but no such state line")
        if len(values) != 1 or values[0] is None:
            raise DatabaseError(f"{where}: CronOS_Rst: a signature has one {m.rst_key} delay")
        us = values[0]
        states[m] = StateFingerprint(
            m, states[m].time_s, states[m].gaps_us, states[m].connect_us, us
        )
    for m, vals in spread.items():
        if m not in states or len(vals) != states[m].nb_pkt:
            raise DatabaseError(
                f"{fn}:{spread_line}: Spread {m.rst_key} needs one value per p= of that state"
            )
    for m in rst_spread:
        if m not in rsts:
            raise DatabaseError(f"{fn}:{spread_line}: Spread {m.rst_key}Rst without an RST")
    for m in offset_spread:
        if m not in states:
            raise DatabaseError(f"{fn}:{spread_line}: Spread {m.rst_key}Offset without that state")
    for m in slip:
        if m not in offset_spread:
            raise DatabaseError(
                f"{fn}:{spread_line}: Spread {m.rst_key}Slip without {m.rst_key}Offset"
            )
    return [Signature(
        name, tuple(classes), tuple(cpes), tuple(sources), features, states, spread,
        rst_spread, offset_spread, fn, first_no, init_ttl=init_ttl, offset_slip_us=slip,
        features6=features6,
    )]  # fmt: skip


def _parse_ttl(text: str, where: str) -> int:
    v = text.strip()
    if v not in ("32", "64", "128", "255"):
        raise DatabaseError(f"{where}: Ttl {v[:20]!r}: an initial TTL is 32, 64, 128 or 255")
    return int(v)


def _law_variants(name, classes, cpes, sources, features, law_line, fn, first_no, init_ttl=None,
                  features6=None):  # fmt: skip
    from .laws import expand

    n, text = law_line
    law, variants = expand(text, f"{fn}:{n}")
    w = 1.0 / len(variants)
    return [
        Signature(
            f"{name}: " + ", ".join(f"{k}={v}" for k, v in v.params), tuple(classes),
            tuple(cpes), tuple(sources), features, dict(v.states), dict(v.spread_us), {}, {},
            fn, first_no, law_block=name, law=law.name, params=v.params, weight=w, law_text=text,
            init_ttl=init_ttl, features6=features6,
        )
        for v in variants
    ]  # fmt: skip


def parse_class(text: str, where: str) -> OsClass:
    """A ``Class`` line's value; ``DatabaseError`` naming ``where`` if malformed."""
    text = text.strip()
    if text == "unknown":
        return UNKNOWN_CLASS
    parts = [p.strip() for p in text.split("|")]
    if len(parts) != 4 or not parts[0] or not parts[1]:
        raise DatabaseError(
            f"{where}: Class needs 'vendor | family | generation | device type' or 'unknown'"
        )
    return OsClass(*parts)


def _parse_spread(text: str, where: str) -> tuple[dict, dict, dict, dict]:
    spread: dict[Method, tuple[int, ...]] = {}
    single: dict[str, dict[Method, int]] = {"rst": {}, "offset": {}}
    slip: dict[Method, tuple[int, int, int]] = {}
    for tok in text.split():
        key, sep, val = tok.partition("=")
        if not sep or key not in _SPREAD_KEYS:
            raise DatabaseError(f"{where}: Spread field {tok[:30]!r}: expected e.g. Syn=1000,2000")
        method, kind = _SPREAD_KEYS[key]
        try:
            nums = tuple(int(v) for v in val.split(",")) if val else ()
        except ValueError:
            raise DatabaseError(f"{where}: Spread {key}: values must be integers (us)") from None
        if kind == "slip":
            if len(nums) != 3 or nums[0] > nums[1] or not 0 < nums[2] <= 100:
                raise DatabaseError(
                    f"{where}: Spread {key}: expected LO,HI,PERCENT (us, LO <= HI, 1..100)"
                )
            slip[method] = (nums[0], nums[1], nums[2])
            continue
        if any(v < 0 for v in nums):
            raise DatabaseError(f"{where}: Spread {key}: negative value")
        if kind != "gaps":
            if len(nums) != 1:
                raise DatabaseError(f"{where}: Spread {key} takes one value")
            single[kind][method] = nums[0]
        else:
            spread[method] = nums
    return spread, single["rst"], single["offset"], slip
