"""The scale lab: thousands of AnyIP addresses per namespace, scanned for real."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cronos.errors import LabError
from cronos.lab import state as state_mod
from cronos.lab.scale import ScaleLab, host_address, host_address6, scale_profile, split

from helpers import assert_ran, names_profile

BACKLOG = Path("/proc/sys/net/core/netdev_max_backlog")


def test_addresses_split_and_profiles():
    assert split(10, 4) == [3, 3, 2, 2]
    assert host_address(1, 0) == "10.101.0.1"
    assert host_address(2, 253) == "10.102.0.254"
    assert host_address(2, 254) == "10.102.1.1"  # never .0 nor .255
    assert host_address6(10, 0) == "fd78:0:0:a::1" and host_address6(1, 254) == "fd78:0:0:1::ff"
    p = scale_profile("linux-synack4")
    assert dict(p.sysctls)["net.ipv4.tcp_synack_retries"] == "4"
    assert p.expected_ms["SYN_RCVD"] == (1020, 2020, 4128, 8128)  # timer-wheel middles
    assert scale_profile("linux-synack3").name == "linux-synack3"  # the registry's
    with pytest.raises(LabError):
        scale_profile("linux-synack9")


@pytest.fixture
def lab():
    with ScaleLab.create(64, ["linux-synack2", "linux-orphan2"]) as lab:
        yield lab


@pytest.mark.netns
def test_scan_64_addresses_of_each_family(lab, tmp_path):
    assert len(lab.hosts) == 64 and len(set(lab.hosts)) == 64
    assert lab.hosts[:2] == ("10.101.0.1", "10.102.0.1")  # interleaved
    for g in lab.groups:
        out = lab._ctx.ns_exec(g.netns, "sysctl", "-n", "net.ipv4.tcp_syncookies").stdout
        assert out.strip() == "0"
    assert int(BACKLOG.read_text()) >= 65536
    hosts = tmp_path / "hosts.txt"
    lab.write_targets(hosts, n6=64)  # as many IPv6 addresses: one mixed scan
    assert len(lab.hosts6) == 64 and lab.hosts6[:2] == ("fd78:0:0:1::1", "fd78:0:0:2::1")
    # two shards of one seed, at once from one scanner (ZMap's --shard): together they
    # scan every address once
    before = lab.counters()
    outs = [tmp_path / f"shard{i}.jsonl" for i in range(2)]

    def shard(i: int, out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cronos", "scan", "--netns", lab.scanner_ns, "-iL", str(hosts),
             "-p", "80", "-m", "s", "--timeout", "3", "--max-rate", "2000", "-q", "-oJ", str(out),
             "--shard", f"{i}/2", "--seed", "2026", "-oP", str(out.with_suffix(".parquet"))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    procs = [shard(i, out) for i, out in enumerate(outs)]
    try:
        for p in procs:
            _out, err = p.communicate(timeout=60)
            assert_ran(subprocess.CompletedProcess(p.args, p.returncode, "", err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    shards = [[r for r in map(json.loads, out.read_text().splitlines()) if "arrivals_us" in r]
              for out in outs]  # fmt: skip
    assert all(len(x) > 32 for x in shards)  # each shard has its share (about 64)
    recs = shards[0] + shards[1]
    for out, mine in zip(outs, shards, strict=True):  # -oP: the same records, columnar
        rows = pq.read_table(out.with_suffix(".parquet")).to_pylist()
        assert sorted(x["target"] for x in rows if x["record"] == "measurement") == sorted(
            r["target"] for r in mine
        )
        verdicts = [x for x in rows if x["record"] == "verdict"]
        assert len(verdicts) == len(mine) and all(x["architecture_kind"] for x in verdicts)
    assert sorted(r["target"] for r in recs) == sorted(lab.hosts + lab.hosts6)
    for r in recs:
        want = lab.group_of(r["target"]).synack_retries
        assert r["status"] == "ok" and r["nb_pkt"] == want, r
    after = lab.counters()
    for g in lab.groups:
        for key in ("SyncookiesSent", "ListenDrops", "veth_rx_dropped"):
            assert after[g.netns][key] == before[g.netns][key], (g.netns, key)


@pytest.mark.netns
def test_removed_on_error_and_backlog_restored():
    old = int(BACKLOG.read_text())
    with pytest.raises(RuntimeError), ScaleLab.create(8, ["linux-synack2"]) as lab:
        names = [g.netns for g in lab.groups] + [lab.scanner_ns]
        lab_id = lab.id
        raise RuntimeError("boom")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in left for n in names)
    assert lab_id not in state_mod.list_ids()
    if old < 65536:
        assert int(BACKLOG.read_text()) == old


@pytest.mark.netns
def test_large_scan_classifies_in_workers_and_loses_no_host(tmp_path):
    """300 hosts (>= HostReporter.WORKER_MIN_HOSTS): verdicts come from the
    worker processes; every host gets its records and its verdict record."""
    with ScaleLab.create(300, ["linux-orphan2"]) as big:
        hosts = tmp_path / "hosts.txt"
        big.write_targets(hosts)
        out = tmp_path / "out.jsonl"
        res = subprocess.run(
            [sys.executable, "-m", "cronos", "scan", "--netns", big.scanner_ns, "-iL", str(hosts),
             "-p", "80", "-m", "s", "--timeout", "3", "--max-rate", "3000", "-oJ", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        verdicts = [r for r in recs if r.get("type") == "verdict"]
        assert len([r for r in recs if "arrivals_us" in r]) == 300
        assert sorted(v["target"] for v in verdicts) == sorted(big.hosts)
        assert all(names_profile(v["verdict"], "linux-orphan2") for v in verdicts), verdicts[0]
        assert res.stdout.count("Cron-OS scan report for") == 300
        left = subprocess.run(["pgrep", "-f", "cronos scan --netns " + big.scanner_ns],
                              capture_output=True, text=True).stdout  # fmt: skip
        assert left == ""  # the workers are gone with the scan
