"""Frozen, typed data shared by probes, matcher, database and outputs.

Units are in the field names (``gaps_us``, ``time_s``). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from .errors import FingerprintSyntaxError


class Method(StrEnum):
    """The three TCP states Cron-OS measures (letters as in ``-m slf``)."""

    SYN_RCVD = "s"
    LAST_ACK = "l"
    FIN_WAIT1 = "f"

    @property
    def line_name(self) -> str:
        return _LINE_NAMES[self]

    @property
    def state_name(self) -> str:
        return {"s": "SYN_RCVD", "l": "LAST_ACK", "f": "FIN_WAIT1"}[self.value]

    @property
    def rst_key(self) -> str:
        return {"s": "Syn", "l": "LastAck", "f": "FinWait"}[self.value]


_LINE_NAMES = {
    Method.SYN_RCVD: "CronOS_Syn",
    Method.LAST_ACK: "CronOS_LastAck",
    Method.FIN_WAIT1: "CronOS_FinWait",
}
_BY_LINE_NAME = {v: k for k, v in _LINE_NAMES.items()}
_BY_RST_KEY = {m.rst_key: m for m in Method}


class Status(StrEnum):
    """Outcome of one probe (one state, one try)."""

    OK = "ok"  # the state was reached and its retransmissions timed
    FILTERED = "filtered"  # nothing came back
    CLOSED = "closed"  # the port answered the SYN with RST
    RESET = "reset"  # connection reset before the timed state was reached
    NO_CLOSE = "no-close"  # the server never sent its FIN (closing states)
    ABORTED = "aborted"  # interrupted by the user before the end of the window


@dataclass(frozen=True)
class StateFingerprint:
    """Timing of one state, as in the talk's ``CronOS_Syn(...)`` lines.

    ``gaps_us[i]`` is the delay between packet i and i+1 of the retransmitted
    series (first SYN-ACK or first FIN, then each retransmission);
    ``nb_pkt`` (retransmissions seen) is ``len(gaps_us)``. ``time_s`` is the
    listening window. ``connect_us`` is the handshake RTT (closing states).
    ``rst_us`` is the delay from the last retransmission to a final RST.
    """

    method: Method
    time_s: int
    gaps_us: tuple[int, ...] = ()
    connect_us: int | None = None
    rst_us: int | None = None
    #: listening time after the first packet of the series (µs), when the
    #: scanner knows it; not in the talk's line (``Time`` is whole seconds)
    listened_us: int | None = field(default=None, compare=False)

    @property
    def nb_pkt(self) -> int:
        return len(self.gaps_us)

    def line(self) -> str:
        """The talk's syntax, e.g. ``CronOS_Syn(nbPkt=2%Time=30%p=2806316%p=6010910)``."""
        parts = [f"nbPkt={self.nb_pkt}", f"Time={self.time_s}"]
        if self.method is not Method.SYN_RCVD and self.connect_us is not None:
            parts.append(f"Connect={self.connect_us}")
        parts += [f"p={g}" for g in self.gaps_us]
        return f"{self.method.line_name}({'%'.join(parts)})"


@dataclass(frozen=True)
class SynAckFeatures:
    """Header features of the first SYN-ACK (Hershel's non-timing features).

    Over IPv6 ``ttl`` is the hop limit, ``df`` False and ``ip_id`` None (no
    such fields), and ``flow`` says whether the flow label was zero ("0") or
    not ("R": non-zero; "C": the same non-zero label in every flow of a port,
    which only several tries can show, see ``port_header``); ``flow`` is None
    over IPv4. ``flow_label`` is the label itself (IPv6; not compared).
    ``v4_equivalent`` gives the header the same stack would have sent over
    IPv4, which the database's signatures describe."""

    window: int
    ttl: int
    df: bool
    ip_id: int | None  # None: not measured (Hershel data has no IP ID)
    mss: int | None
    options: str  # option letters in wire order: M N W S T E (as Hershel)
    wscale: int | None
    flow: str | None = None  # IPv6: "0", "R" or "C"; None: IPv4
    flow_label: int | None = field(default=None, compare=False, repr=False)

    @property
    def v6(self) -> bool:
        return self.flow is not None

    def line(self) -> str:
        if self.v6:
            parts = [f"W={self.window:X}", f"HL={self.ttl}", f"FL={self.flow}"]
        else:
            parts = [
                f"W={self.window:X}",
                f"TTL={self.ttl}",
                f"DF={'Y' if self.df else 'N'}",
                f"ID={'' if self.ip_id is None else self.ip_id}",
            ]
        parts += [
            f"MSS={'' if self.mss is None else self.mss}",
            f"O={self.options}",
            f"WS={'' if self.wscale is None else self.wscale}",
        ]
        return f"CronOS_Hdr({'%'.join(parts)})"

    def v4_equivalent(self) -> SynAckFeatures:
        """The SYN-ACK the stack would send over IPv4 on the same link: an MSS
        20 bytes larger (a 40-byte IPv6 header instead of 20), and a window
        that is a whole number of segments (Linux: 45 x 1428 = 64260 over IPv6
        for 45 x 1448 = 65160 over IPv4, timestamps on) rescaled the same way,
        within 16 bits.
        DF and the IP ID stay unknown to the caller (``df`` False here)."""
        if not self.v6:
            return self
        mss = self.mss + 20 if self.mss is not None else None
        window = self.window
        if self.mss:
            seg = self.mss - (12 if "T" in self.options else 0)
            if seg > 0 and window % seg == 0 and 1 <= window // seg <= 64:
                # as many segments, or as many as fit 16 bits (Linux rounds
                # 65535 down to whole segments: 45 x 1440 = 64800 over IPv6,
                # 44 x 1460 = 64240 over IPv4, timestamps off)
                k = min(window // seg, 0xFFFF // (seg + 20))
                window = k * (seg + 20)
        return SynAckFeatures(window, self.ttl, False, None, mss, self.options, self.wscale)


def port_header(features: Sequence[SynAckFeatures | None]) -> SynAckFeatures | None:
    """The header line of a port: its first SYN-ACK's, with the IPv6 flow
    label's behaviour read across flows: "C" when two or more flows (tries)
    carried the same non-zero label (a constant label), "R" when they
    differ (Linux hashes each flow), as measured in each flow otherwise."""
    known = [f for f in features if f is not None]
    if not known:
        return None
    first = known[0]
    labels = {f.flow_label for f in known if f.v6 and f.flow_label}
    flows = sum(1 for f in known if f.v6 and f.flow_label)
    if first.v6 and flows >= 2 and len(labels) == 1:
        return replace(first, flow="C")
    return first


def fingerprint_lines(fps: Sequence[StateFingerprint],
                      features: SynAckFeatures | None = None) -> list[str]:  # fmt: skip
    """The ``CronOS_*`` lines of one port: the SYN-ACK header, one state line per
    fingerprint (state order, then the order given: tries), and the final RSTs.

    The one renderer of these lines (text report, HTML, nmap XML, the database
    block, the "add it to a --db file" block). ``CronOS_Rst`` lists, per state,
    the RST delay of each of its lines in the same order, ``-`` for a line
    without one (``Syn=9000000%Syn=-``: try 1 ended with an RST, try 2 did
    not); a state whose lines had none is left out. ``parse_rst_line`` reads
    it back."""
    lines = [features.line()] if features is not None else []
    ordered = [fp for m in Method for fp in fps if fp.method is m]
    lines += [fp.line() for fp in ordered]
    rst = []
    for m in Method:
        mine = [fp.rst_us for fp in ordered if fp.method is m]
        if any(us is not None for us in mine):
            rst += [f"{m.rst_key}={'-' if us is None else us}" for us in mine]
    if rst:
        lines.append(f"CronOS_Rst({'%'.join(rst)})")
    return lines


@dataclass(frozen=True)
class Observation:
    """One measurement: one target, port, state and try."""

    target: str
    port: int
    method: Method
    try_index: int
    status: Status
    fingerprint: StateFingerprint
    features: SynAckFeatures | None = None
    src_port: int = 0
    started_at: float = 0.0  # unix time the stimulus was sent
    arrivals_us: tuple[int, ...] = ()  # arrival of each timed packet, from the stimulus
    packets_in: int = 0
    ttl_in: int | None = None  # IP TTL of the first timed packet (SYN-ACK or FIN)
    note: str = ""
    # where the record came from and how it ended; set when it is made (with
    # dataclasses.replace), written by to_dict and read back by from_dict
    input_id: str | None = field(default=None, compare=False)  # the input line or record id
    verdict_s: float | None = field(default=None, compare=False)  # early stop: time to verdict
    source: str | None = field(default=None, compare=False)  # "passive": not our own probe

    def to_dict(self) -> dict:
        fp = self.fingerprint
        d = {
            "target": self.target,
            "port": self.port,
            "method": self.method.value,
            "state": self.method.state_name,
            "try": self.try_index,
            "status": self.status.value,
            "src_port": self.src_port,
            "started_at": round(self.started_at, 6),
            "time_s": fp.time_s,
            "nb_pkt": fp.nb_pkt,
            "gaps_us": list(fp.gaps_us),
            "connect_us": fp.connect_us,
            "rst_us": fp.rst_us,
            "listened_us": fp.listened_us,
            "arrivals_us": list(self.arrivals_us),
            "packets_in": self.packets_in,
            "ttl_in": self.ttl_in,
            "fingerprint": fp.line(),
            "features": asdict(self.features) if self.features else None,
            "note": self.note,
        }
        for key in ("input_id", "verdict_s", "source"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Observation:
        try:
            method = Method(d["method"])
            fp = StateFingerprint(
                method=method,
                time_s=int(d["time_s"]),
                gaps_us=tuple(int(g) for g in d.get("gaps_us") or ()),
                connect_us=None if d.get("connect_us") is None else int(d["connect_us"]),
                rst_us=None if d.get("rst_us") is None else int(d["rst_us"]),
                listened_us=None if d.get("listened_us") is None else int(d["listened_us"]),
            )
            feats = d.get("features")
            return cls(
                target=str(d.get("target", "")),
                port=int(d.get("port", 0)),
                method=method,
                try_index=int(d.get("try", 1)),
                status=Status(d.get("status", "ok")),
                fingerprint=fp,
                features=SynAckFeatures(**feats) if feats else None,
                src_port=int(d.get("src_port", 0)),
                started_at=float(d.get("started_at", 0.0)),
                arrivals_us=tuple(int(a) for a in d.get("arrivals_us") or ()),
                packets_in=int(d.get("packets_in", 0)),
                ttl_in=None if d.get("ttl_in") is None else int(d["ttl_in"]),
                note=str(d.get("note", "")),
                input_id=None if d.get("input_id") is None else str(d["input_id"]),
                verdict_s=None if d.get("verdict_s") is None else float(d["verdict_s"]),
                source=None if d.get("source") is None else str(d["source"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FingerprintSyntaxError(f"not a Cron-OS observation record: {exc}") from exc


# --- parsing of fingerprint lines ------------------------------------------


def _split_line(line: str) -> tuple[str, list[tuple[str, str]]]:
    line = line.strip()
    if "(" not in line or not line.endswith(")"):
        raise FingerprintSyntaxError(f"expected NAME(key=value%...), got {line[:60]!r}")
    name, body = line[:-1].split("(", 1)
    pairs: list[tuple[str, str]] = []
    if body:
        for item in body.split("%"):
            if "=" not in item:
                raise FingerprintSyntaxError(f"{name}: field {item[:30]!r} has no '='")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v.strip()))
    return name.strip(), pairs


def _int(name: str, key: str, value: str, lo: int = 0, hi: int = 10**12) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise FingerprintSyntaxError(f"{name}: {key}={value[:20]!r} is not an integer") from None
    if not lo <= n <= hi:
        raise FingerprintSyntaxError(f"{name}: {key}={n} out of range [{lo}, {hi}]")
    return n


def parse_state_line(line: str) -> StateFingerprint:
    """Parse ``CronOS_Syn(...)``, ``CronOS_LastAck(...)`` or ``CronOS_FinWait(...)``."""
    name, pairs = _split_line(line)
    if name not in _BY_LINE_NAME:
        raise FingerprintSyntaxError(f"unknown fingerprint line {name!r}")
    method = _BY_LINE_NAME[name]
    nb = time_s = connect = None
    gaps: list[int] = []
    for k, v in pairs:
        if k == "nbPkt":
            nb = _int(name, k, v, 0, 100000)
        elif k == "Time":
            time_s = _int(name, k, v, 0, 10**7)
        elif k == "Connect":
            connect = _int(name, k, v)
        elif k == "p":
            gaps.append(_int(name, k, v))
        else:
            raise FingerprintSyntaxError(f"{name}: unknown field {k!r}")
    if nb is None or time_s is None:
        raise FingerprintSyntaxError(f"{name}: nbPkt and Time are required")
    if nb != len(gaps):
        raise FingerprintSyntaxError(f"{name}: nbPkt={nb} but {len(gaps)} p= values")
    return StateFingerprint(method, time_s, tuple(gaps), connect)


def parse_rst_line(line: str) -> dict[Method, tuple[int | None, ...]]:
    """Parse ``CronOS_Rst(Syn=...%LastAck=...)`` into {method: the delay (µs)
    of each of its state lines in order, None for ``-``} (``fingerprint_lines``)."""
    name, pairs = _split_line(line)
    if name != "CronOS_Rst":
        raise FingerprintSyntaxError(f"expected CronOS_Rst(...), got {name!r}")
    out: dict[Method, list[int | None]] = {}
    for k, v in pairs:
        if k not in _BY_RST_KEY:
            raise FingerprintSyntaxError(f"CronOS_Rst: unknown state {k!r}")
        out.setdefault(_BY_RST_KEY[k], []).append(None if v == "-" else _int(name, k, v))
    return {m: tuple(v) for m, v in out.items()}


_OPT_LETTERS = set("MNWSTE")


def parse_hdr_line(line: str) -> SynAckFeatures:
    """Parse ``CronOS_Hdr(W=FAF0%TTL=64%DF=Y%ID=0%MSS=1460%O=MSTNW%WS=7)``, or
    its IPv6 form ``CronOS_Hdr(W=FB04%HL=64%FL=R%MSS=1440%O=MSTNW%WS=7)``."""
    name, pairs = _split_line(line)
    if name != "CronOS_Hdr":
        raise FingerprintSyntaxError(f"expected CronOS_Hdr(...), got {name!r}")
    d = dict(pairs)
    v6 = "HL" in d
    need = {"W", "HL", "FL", "MSS", "O", "WS"} if v6 else {"W", "TTL", "DF", "ID", "MSS", "O", "WS"}
    missing = need - d.keys()
    if missing:
        raise FingerprintSyntaxError(f"CronOS_Hdr: missing {', '.join(sorted(missing))}")
    if v6 and d.keys() & {"TTL", "DF", "ID"}:
        raise FingerprintSyntaxError("CronOS_Hdr: HL and FL (IPv6) go without TTL, DF and ID")
    try:
        window = int(d["W"], 16)
    except ValueError:
        raise FingerprintSyntaxError(f"CronOS_Hdr: W={d['W']!r} is not hex") from None
    if not v6 and d["DF"] not in ("Y", "N"):
        raise FingerprintSyntaxError("CronOS_Hdr: DF must be Y or N")
    if v6 and d["FL"] not in ("0", "R", "C"):
        raise FingerprintSyntaxError(
            "CronOS_Hdr: FL must be 0 (zero), R (non-zero) or C (constant across flows)"
        )
    if not set(d["O"]) <= _OPT_LETTERS:
        raise FingerprintSyntaxError(f"CronOS_Hdr: O={d['O']!r} has letters outside MNWSTE")
    return SynAckFeatures(
        window=window,
        ttl=_int(name, "HL" if v6 else "TTL", d["HL" if v6 else "TTL"], 0, 255),
        df=False if v6 else d["DF"] == "Y",
        ip_id=None if v6 or not d["ID"] else _int(name, "ID", d["ID"], 0, 65535),
        mss=_int(name, "MSS", d["MSS"], 0, 65535) if d["MSS"] else None,
        options=d["O"],
        wscale=_int(name, "WS", d["WS"], 0, 255) if d["WS"] else None,
        flow=d["FL"] if v6 else None,
    )


def schedule_us(fp: StateFingerprint, scale: float = 1.0, shift_us: float = 0.0,
                first_lost: bool = False) -> tuple[list[float], float | None]:  # fmt: skip
    """A schedule's expected arrival times, stretched by ``scale``, from the
    first packet observed (expected packet 1 when the first one was lost)
    plus ``shift_us``, and the final RST's (None: the schedule has none)."""
    cum = [0.0]
    for g in fp.gaps_us:
        cum.append(cum[-1] + g * scale)
    k0 = 1 if first_lost and len(cum) > 1 else 0
    times = [c - cum[k0] + shift_us for c in cum]
    rst = None
    if fp.rst_us is not None:
        rst = cum[-1] + fp.rst_us * scale - cum[k0] + shift_us
    return times, rst
