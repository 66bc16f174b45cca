"""A Dask cluster of scanners: a scheduler and two ``cron-os worker``s, each
scanning from its own namespace and address (two scanners of one scale lab),
against a one-process scan of the same targets; then one worker killed
(SIGKILL) in the middle of a scan: nothing lost, nothing duplicated, nothing
left behind. ``classify --cluster`` against ``classify``."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cronos.lab.dask import LocalCluster
from cronos.lab.scale import ScaleLab

from helpers import assert_ran

CMD = [sys.executable, "-m", "cronos"]
N_HOSTS = 60


@pytest.fixture(scope="module")
def lab():
    # linux-orphan2 answers SYN_RCVD with one retransmission: a short schedule
    with ScaleLab.create(N_HOSTS, ["linux-orphan2", "linux-synack2"]) as lab:
        second = lab.add_scanner(2)
        lab.second_ns = second
        yield lab


@pytest.fixture
def cluster(lab, tmp_path):
    before = {x for x in os.listdir("/tmp") if x.startswith("cronos-worker-")}
    c = LocalCluster(tmp_path)
    try:
        c.worker("a", lab.scanner_ns)
        c.worker("b", lab.second_ns)
        yield c
    finally:
        c.close()
    left = {x for x in os.listdir("/tmp") if x.startswith("cronos-worker-")} - before
    if left:  # a worker killed with SIGKILL leaves its directory: cleanup removes it
        r = subprocess.run([*CMD, "cleanup"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        for x in left:
            assert not _alive(x) and f"removed worker directory /tmp/{x}" in r.stdout
    assert {x for x in os.listdir("/tmp") if x.startswith("cronos-worker-")} - before == set()
    for ns in (lab.scanner_ns, lab.second_ns):
        tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                                capture_output=True, text=True).stdout  # fmt: skip
        assert "cronos_" not in tables, (ns, tables)
    assert _scans(lab) == []


def _alive(dirname: str) -> bool:
    pid = dirname.split("-")[2]
    return Path(f"/proc/{pid}").exists()


def _scans(lab) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "cronos scan"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if lab.id in ln]


def _records(path: Path) -> tuple[list[dict], list[dict]]:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    return ([r for r in recs if r.get("type") != "verdict"],
            [r for r in recs if r.get("type") == "verdict"])  # fmt: skip


def _shape(r: dict) -> tuple:
    return (r["target"], r["port"], r["method"], r["try"], r["status"], r["nb_pkt"])


@pytest.mark.netns
def test_cluster_scan_equals_one_process_scan(lab, cluster, tmp_path):
    hosts = tmp_path / "hosts.txt"
    lab.write_targets(hosts)
    common = ["-iL", str(hosts), "-p", "80", "-m", "s", "--timeout", "3", "--max-rate", "400"]
    one = tmp_path / "one.jsonl"
    r = subprocess.run([*CMD, "scan", "--netns", lab.scanner_ns, *common, "-q", "-oJ", str(one)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert_ran(r)
    many = tmp_path / "cluster.jsonl"
    r = subprocess.run([*CMD, "scan", "--cluster", cluster.address, "--shards", "2", *common,
                        "--seed", "17", "-oJ", str(many), "-oP", str(tmp_path / "c.parquet")],
                       capture_output=True, text=True, timeout=180)  # fmt: skip
    assert_ran(r)  # exit 0, no traceback; a capture loss skips
    assert "2 scanner worker(s), 2 shards (seed 17)" in r.stdout
    meas, verdicts = _records(many)
    meas1, verdicts1 = _records(one)
    assert sorted(map(_shape, meas)) == sorted(map(_shape, meas1))  # the same records
    assert len(meas) == N_HOSTS and {r["status"] for r in meas} == {"ok"}
    for rec in meas:
        assert rec["nb_pkt"] == lab.group_of(rec["target"]).synack_retries
    assert sorted(v["target"] for v in verdicts) == sorted(v["target"] for v in verdicts1)
    # both scanners worked: each from its own address (the targets saw two sources)
    assert r.stdout.count("\n10.") == N_HOSTS  # one verdict line per host


@pytest.mark.netns
def test_worker_killed_mid_scan_loses_and_duplicates_nothing(lab, cluster, tmp_path):
    hosts = tmp_path / "hosts.txt"
    lab.write_targets(hosts)
    out = tmp_path / "cluster.jsonl"
    # slow enough that shards are still to run when a worker dies
    p = subprocess.Popen(
        [*CMD, "scan", "--cluster", cluster.address, "--shards", "6", "-iL", str(hosts), "-p",
         "80", "-m", "s", "--timeout", "2", "--max-rate", "10", "--seed", "5", "-q", "-oJ",
         str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while (not out.exists() or len(out.read_text().splitlines()) < 6) and p.poll() is None:
            assert time.time() < deadline, "no record arrived"
            time.sleep(0.2)
        victim = cluster.procs["b"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        _stdout, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert_ran(subprocess.CompletedProcess(p.args, p.returncode, "", err))
    meas, verdicts = _records(out)
    keys = [
        (r["target"], r["port"], r["method"], r["try"]) for r in meas if r["status"] != "aborted"
    ]
    assert len(keys) == len(set(keys)) == N_HOSTS  # nothing lost, nothing duplicated
    assert sorted(k[0] for k in keys) == sorted(lab.hosts)
    # the killed worker's scan died with it (PR_SET_PDEATHSIG) and took its table away
    deadline = time.time() + 20
    while _scans(lab) and time.time() < deadline:
        time.sleep(0.2)
    assert _scans(lab) == []


@pytest.mark.netns
def test_classify_on_the_cluster_equals_classify(cluster, tmp_path):
    src = Path(__file__).parent / "data" / "syn_linux_synack2.jsonl"
    base = json.loads(src.read_text())
    recs = [dict(base, target=f"10.0.{i // 200}.{i % 200}") for i in range(250)]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    outs = []
    for extra in ((), ("--cluster", cluster.address)):
        out = tmp_path / f"v{len(outs)}.jsonl"
        r = subprocess.run([*CMD, "classify", str(data), "-oJ", str(out), "--no-calibrate",
                            *extra], capture_output=True, text=True, timeout=180)  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0].count("\n") == 250
