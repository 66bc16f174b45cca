"""Columnar results: ``-oP FILE.parquet`` (Apache Parquet, written with pyarrow).

One file, one flat schema (``SCHEMA``), one row per record: ``record`` says
which kind. A measurement row carries the JSON Lines measurement record's
fields (``Observation.to_dict``), its SYN-ACK header fields flattened
(``hdr_window``, ``hdr_ttl``, ...: ``window`` is an SQL keyword); a verdict
row carries the verdict record's (``verdict_dict``, and in a scan the
port's architecture verdict). A field that a kind of row does not have is
null. DuckDB, pandas or Spark read the
file as it is; ``cron-os classify FILE.parquet`` reads its measurements back.

Rows are buffered and written as row groups of ``ROW_GROUP`` rows; the
file's footer is written when the writer closes (normal end, an error,
Ctrl-C, SIGTERM). A process killed with SIGKILL leaves no readable Parquet
file: the JSON Lines file (``-oJ``), written record by record, is the
crash-safe record of a scan; ``cron-os classify FILE.jsonl -oP FILE.parquet``
makes the columnar file from it afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import FingerprintSyntaxError, UsageError

ROW_GROUP = 16_384
MAGIC = b"PAR1"

#: (column, arrow type name, what it holds): the documented schema (README)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("record", "string", "'measurement' or 'verdict'"),
    ("target", "string", "address (classify: the input's target name)"),
    ("port", "int32", "TCP port (null in a classify verdict)"),
    # measurement rows
    ("method", "string", "s, l or f"),
    ("state", "string", "SYN_RCVD, LAST_ACK or FIN_WAIT1"),
    ("try", "int32", "try number, from 1"),
    ("status", "string", "ok, closed, filtered, no-response, aborted, ..."),
    ("src_port", "int32", "our source port"),
    ("started_at", "timestamp[us, UTC]", "when the stimulus was sent"),
    ("time_s", "int32", "the fingerprint's Time= (s)"),
    ("nb_pkt", "int32", "retransmissions timed"),
    ("gaps_us", "list<int64>", "gaps between the timed packets (µs)"),
    ("connect_us", "int64", "handshake RTT (closing states, µs)"),
    ("rst_us", "int64", "final RST after the last packet (µs)"),
    ("listened_us", "int64", "how long the state was listened to (µs)"),
    ("arrivals_us", "list<int64>", "arrival of each timed packet from the stimulus (µs)"),
    ("packets_in", "int32", "packets received in the flow"),
    ("ttl_in", "int32", "TTL / hop limit of the first timed packet"),
    ("fingerprint", "string", "the CronOS_Syn/Lack/Fin line"),
    ("hdr_window", "int32", "SYN-ACK window"),
    ("hdr_ttl", "int32", "SYN-ACK TTL (hop limit over IPv6)"),
    ("hdr_df", "bool", "SYN-ACK DF bit"),
    ("hdr_ip_id", "int32", "SYN-ACK IP ID"),
    ("hdr_mss", "int32", "SYN-ACK MSS option"),
    ("hdr_options", "string", "SYN-ACK option letters in wire order (M N W S T E)"),
    ("hdr_wscale", "int32", "SYN-ACK window scale"),
    ("hdr_flow", "string", "IPv6 flow label behaviour: 0, R or C (null over IPv4)"),
    ("hdr_flow_label", "int64", "IPv6 flow label of the SYN-ACK"),
    ("note", "string", "the measurement's note"),
    ("input_id", "string", "classify: the input line or record"),
    ("verdict_s", "float64", "early stop: seconds to the verdict"),
    ("source", "string", "passive: not our own probe"),
    # verdict rows
    ("verdict", "string", "the stack named, or 'no match'"),
    ("verdict_class", "string", "its Class line (vendor | OS | version | type)"),
    ("confidence", "float64", "posterior of the verdict (0 for no match)"),
    ("p_unknown", "float64", "probability of a stack in no signature"),
    ("ties", "int32", "signatures tied first"),
    ("fit", "float64", "cost per observation against the unknown stack's"),
    ("observations", "int32", "observations the verdict rests on"),
    ("inputs", "list<string>", "classify: the input ids"),
    ("candidates", "list<struct>", "name, confidence, score, success, tests, evidence, line"),
    ("signature", "string", "no match: the target's own signature block"),
    ("architecture_kind", "string", "scan: syn-proxy, filtering-firewall, ..., consistent"),
    ("architecture", "string", "scan: the architecture verdict's summary"),
    ("architecture_evidence", "list<string>", "scan: its evidence"),
)

_FEATURES = ("window", "ttl", "df", "ip_id", "mss", "options", "wscale", "flow", "flow_label")
_NAMES = [c[0] for c in COLUMNS]
#: the measurement record's own fields (the header fields come from its "features")
_MEASUREMENT = [k for k in _NAMES[_NAMES.index("method") : _NAMES.index("source") + 1]
                if not k.startswith("hdr_")]  # fmt: skip


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # a dependency of pyproject.toml: only a broken install
        raise UsageError(f"-oP needs pyarrow ({exc}); run make deps") from None
    return pa, pq


def schema():
    pa, _ = _pa()
    cand = pa.struct([("name", pa.string()), ("confidence", pa.float64()),
                      ("score", pa.float64()), ("success", pa.int32()), ("tests", pa.int32()),
                      ("evidence", pa.string()), ("line", pa.string())])  # fmt: skip
    types = {
        "string": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
        "float64": pa.float64(), "bool": pa.bool_(),
        "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
        "list<int64>": pa.list_(pa.int64()), "list<string>": pa.list_(pa.string()),
        "list<struct>": pa.list_(cand),
    }  # fmt: skip
    return pa.schema([(name, types[kind]) for name, kind, _ in COLUMNS])


def measurement_row(d: dict) -> dict:
    """A measurement record (``Observation.to_dict``) as a row."""
    row = {k: d.get(k) for k in _MEASUREMENT}
    row.update(record="measurement", target=d.get("target"), port=d.get("port"))
    at = d.get("started_at")
    row["started_at"] = None if not at else int(round(at * 1e6))
    feats = d.get("features") or {}
    for k in _FEATURES:
        row["hdr_" + k] = feats.get(k)
    return row


def verdict_row(d: dict) -> dict:
    """A verdict record (``verdict_dict``, with a scan's port and architecture) as a row."""
    arch = d.get("architecture") or {}
    return {
        "record": "verdict", "target": d.get("target"), "port": d.get("port"),
        "verdict": d.get("verdict"), "verdict_class": d.get("class"),
        "confidence": d.get("confidence"), "p_unknown": d.get("p_unknown"),
        "ties": d.get("ties"), "fit": d.get("fit"), "observations": d.get("observations"),
        "inputs": d.get("inputs"),
        "candidates": [{k: c.get(k) for k in ("name", "confidence", "score", "success", "tests",
                                              "evidence", "line")}
                       for c in d.get("candidates") or ()],
        "signature": d.get("signature"),
        "architecture_kind": arch.get("kind"), "architecture": arch.get("summary"),
        "architecture_evidence": arch.get("evidence"),
    }  # fmt: skip


class ParquetWriter:
    """Records in, row groups out; the same calls as ``JsonLinesWriter``."""

    def __init__(self, path: str):
        _pa()
        self.path = path
        parent = Path(path).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"-oP {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)
        ):
            raise UsageError(f"-oP {path}: cannot write: permission denied")
        self._schema = schema()
        self._rows: list[dict] = []
        self.rows = 0
        # the file is made at the first full row group or at close (both in the
        # scan's ``finally`` when interrupted): a signal never leaves a file
        # without its footer behind, only none at all
        self._w = None
        self._closed = False

    def _open(self):
        if self._w is None:
            _, pq = _pa()
            try:
                self._w = pq.ParquetWriter(self.path, self._schema, compression="zstd")
            except OSError as exc:
                raise UsageError(f"-oP {self.path}: cannot write: {exc}") from None
        return self._w

    def write(self, record: dict) -> None:
        kind = record.get("type")
        self._rows.append(verdict_row(record) if kind == "verdict" else measurement_row(record))
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def write_line(self, line: str) -> None:
        self.write(json.loads(line))

    def sync(self, force: bool = False) -> None:
        """Row groups are written when full: nothing to do per host."""

    def _flush(self) -> None:
        if not self._rows:
            return
        pa, _ = _pa()
        cols = {name: [r.get(name) for r in self._rows] for name in self._schema.names}
        self._open().write_table(pa.Table.from_pydict(cols, schema=self._schema),
                            row_group_size=ROW_GROUP)  # fmt: skip
        self.rows += len(self._rows)
        self._rows = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
        finally:
            self._open().close()  # an empty run: a file with the schema and no row
            try:
                with open(self.path, "rb+") as fh:
                    os.fsync(fh.fileno())
            except OSError:
                pass


class Writers:
    """Several record writers fed alike (-oJ and -oP)."""

    def __init__(self, writers):
        self.writers = [w for w in writers if w is not None]

    def write(self, record: dict) -> None:
        for w in self.writers:
            w.write(record)

    def write_line(self, line: str) -> None:
        for w in self.writers:
            w.write_line(line)

    def sync(self, force: bool = False) -> None:
        for w in self.writers:
            w.sync(force)

    def close(self) -> None:
        errors = []
        for w in self.writers:
            try:
                w.close()
            except Exception as exc:  # close the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]


def is_parquet(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def iter_parquet(path: str) -> Iterator:
    """The measurement rows of a Cron-OS Parquet file as ``Observation``s,
    streamed one row group at a time (bounded memory)."""
    from ..model import Observation

    pa, pq = _pa()
    try:
        f = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
    names = set(f.schema_arrow.names)
    missing = {"record", "target", "method", "time_s"} - names
    if missing:
        raise UsageError(f"{path}: not a Cron-OS Parquet file (no column {sorted(missing)[0]})")
    n = 0
    try:
        for batch in f.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                if row.get("record") != "measurement":
                    continue
                at = row.get("started_at")
                d = dict(row)
                d["started_at"] = at.timestamp() if at is not None else 0.0
                if row.get("hdr_options") is not None:
                    d["features"] = {k: row.get("hdr_" + k) for k in _FEATURES}
                try:
                    obs = Observation.from_dict(d)
                except FingerprintSyntaxError as exc:
                    raise FingerprintSyntaxError(f"{path}: row {n}: {exc}") from None
                yield obs
    except (OSError, pa.lib.ArrowException) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
