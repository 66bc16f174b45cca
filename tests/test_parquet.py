"""-oP: one Parquet file of measurement and verdict rows, read back by classify."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from cronos.render.parquet import COLUMNS

CMD = [sys.executable, "-m", "cronos"]
DATA = Path(__file__).parent / "data" / "syn_linux_synack2.jsonl"


def _records() -> list[dict]:
    """The lab's linux-synack2 record, as three targets: IPv4 twice (two tries of
    one port), IPv6 once (hop limit, flow label), and a filtered try."""
    base = json.loads(DATA.read_text().splitlines()[0])
    two = dict(base, **{"try": 2, "src_port": 40001})
    v6 = dict(base, target="fd77:0:0:1::2", features=dict(base["features"], ttl=64, df=False,
              ip_id=None, mss=1440, window=64800, flow="R", flow_label=123456))  # fmt: skip
    filt = dict(base, target="10.77.1.9", status="filtered", nb_pkt=0, gaps_us=[],
                arrivals_us=[], features=None,
                fingerprint="CronOS_Syn(nbPkt=0%Time=8)")  # fmt: skip
    return [base, two, v6, filt]


def _classify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, "classify", *args], capture_output=True, text=True, timeout=120)


def test_rows_schema_and_round_trip(tmp_path):
    src = tmp_path / "scan.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    a_json, a_pq = tmp_path / "a.jsonl", tmp_path / "a.parquet"
    r = _classify(str(src), "-oJ", str(a_json), "-oP", str(a_pq))
    assert r.returncode == 0, r.stderr
    table = pq.read_table(a_pq)
    assert table.schema.names == [c[0] for c in COLUMNS]
    rows = table.to_pylist()
    meas = [x for x in rows if x["record"] == "measurement"]
    verdicts = [x for x in rows if x["record"] == "verdict"]
    want = [json.loads(x) for x in a_json.read_text().splitlines()]
    assert len(meas) == 4 and len(verdicts) == len(want) == 3
    by_target = {x["target"]: x for x in verdicts}
    for w in want:
        v = by_target[w["target"]]
        assert v["verdict"] == w["verdict"] and v["confidence"] == w["confidence"]
        assert [c["name"] for c in v["candidates"]] == [c["name"] for c in w["candidates"]]
        assert v["p_unknown"] == w["p_unknown"] and v["verdict_class"] == w["class"]
    first = meas[0]
    assert first["gaps_us"] == [1023255, 2015959] and first["hdr_window"] == 65160
    assert first["hdr_options"] == "MSTNW" and first["hdr_df"] is True and first["try"] == 1
    assert abs(first["started_at"].timestamp() - 1795778640.727092) < 1e-6
    six = next(x for x in meas if x["target"] == "fd77:0:0:1::2")
    assert six["hdr_flow"] == "R" and six["hdr_flow_label"] == 123456 and six["hdr_ip_id"] is None
    filt = next(x for x in meas if x["status"] == "filtered")
    assert filt["hdr_window"] is None and filt["gaps_us"] == []
    # classify reads its own Parquet file back: the same verdicts, record for record
    b_json = tmp_path / "b.jsonl"
    r = _classify(str(a_pq), "-oJ", str(b_json))
    assert r.returncode == 0, r.stderr
    assert [json.loads(x) for x in b_json.read_text().splitlines()] == want


def test_nothing_written_is_an_empty_file_with_the_schema(tmp_path):
    from cronos.render.parquet import ParquetWriter

    out = tmp_path / "e.parquet"
    w = ParquetWriter(str(out))
    assert not out.exists()  # made at the first row group or at close, never half-written
    w.close()
    t = pq.read_table(out)
    assert t.num_rows == 0 and t.schema.names == [c[0] for c in COLUMNS]


def test_large_input_is_written_in_row_groups(tmp_path, monkeypatch):
    """More rows than a row group: several groups, every row kept, in order."""
    from cronos.render import parquet

    monkeypatch.setattr(parquet, "ROW_GROUP", 5)
    w = parquet.ParquetWriter(str(tmp_path / "g.parquet"))
    recs = [dict(_records()[0], target=f"10.0.0.{i}") for i in range(12)]
    for r in recs:
        w.write(r)
    w.close()
    f = pq.ParquetFile(tmp_path / "g.parquet")
    assert f.metadata.num_row_groups == 3
    assert f.read().column("target").to_pylist() == [r["target"] for r in recs]
    from cronos.render.parquet import iter_parquet

    assert [o.target for o in iter_parquet(str(tmp_path / "g.parquet"))] == [
        r["target"] for r in recs
    ]
