"""The lab: real namespaces, real kernel stacks, and their removal on every path."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

from cronos.errors import LabError, PrivilegeError
from cronos.lab import PROFILES, STATES, Lab, LabTarget, cleanup_stale
from cronos.lab import lab as lab_mod
from cronos.lab import profiles as prof_mod
from cronos.lab import state as state_mod
from cronos.lab.profiles import Profile

needs_netns = pytest.mark.netns  # root, namespaces: skipped otherwise (conftest)

KERNEL_PROFILES = [n for n, p in PROFILES.items() if p.kind in ("linux", "synproxy")]

# Runs inside the scanner namespace: a real kernel client against each target.
CLIENT = r"""
import json, socket, sys
out = {}
for ip in sys.argv[1:]:
    r = {}
    try:
        s = socket.create_connection((ip, 80), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        r["http"] = data.split(b"\r\n")[0].decode()
        s.close()
        s = socket.create_connection((ip, 1234), timeout=3)
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        r["sink_eof"] = s.recv(10) == b""
        s.close()
    except OSError as exc:
        r["error"] = repr(exc)
    out[ip] = r
print(json.dumps(out))
"""


def _netns_of(lab_id: str) -> list[str]:
    return [n for n in state_mod.list_netns() if n.startswith(f"cronos-{lab_id}-")]


def _root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def _gone(lab: Lab, pids: list[dict]) -> None:
    assert _netns_of(lab.id) == []
    assert f"cr{lab.id}" not in _root_links()
    assert not any(state_mod.proc_alive(e["pid"], e["start"]) for e in pids)
    assert not (state_mod.STATE_DIR / f"{lab.id}.json").exists()


def _clients(lab: Lab) -> dict:
    res = subprocess.run(
        ["ip", "netns", "exec", lab.scanner_ns, sys.executable, "-c", CLIENT,
         *(a for t in lab.targets for a in (t.ip, t.ip6) if a)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def labs():
    """Two labs built at the same time: every kernel profile, and a small one."""
    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(Lab.create, KERNEL_PROFILES),
                pool.submit(Lab.create, ["linux-orphan2", "synproxy"])]  # fmt: skip
        built = [f.result() for f in futs]
    yield built
    for lab in built:
        lab.destroy()


# -- no root needed ---------------------------------------------------------------


def test_profiles_are_consistent():
    for name, p in PROFILES.items():
        assert p.name == name
        assert set(p.expected_ms) <= set(STATES)
        assert all(all(g > 0 for g in gaps) for gaps in p.expected_ms.values())
        assert p.setup.count(":") == 1
    assert PROFILES["synproxy"].expected_ms["SYN_RCVD"] == ()
    assert len(PROFILES["linux-default"].expected_ms["LAST_ACK"]) == 8
    assert len(PROFILES["linux-synack2"].expected_ms["SYN_RCVD"]) == 2


def test_unknown_profile_lists_valid_names(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(LabError, match="valid: linux-default"):
        Lab.create(["no-such-stack"])


def test_not_root_is_a_privilege_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError):
        Lab.create(["linux-default"])


def test_missing_module_makes_profile_unavailable(monkeypatch):
    ghost = Profile("ghost", "nothing", "ghost", "cronos.lab.no_such_module:setup")
    monkeypatch.setitem(PROFILES, "ghost", ghost)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(LabError, match="'ghost' is not available"):
        Lab.create(["ghost"])
    assert not prof_mod.available("ghost")


def test_impairment_needs_its_module(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setitem(sys.modules, "cronos.lab.impair", None)  # import fails
    with pytest.raises(LabError, match="impairment not available"):
        Lab.create(["linux-default"], impair={"delay": "50ms"})


@needs_netns
def test_impairment_is_applied_per_target(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(setup=lambda ctx, ns, spec: calls.append((ns, spec)))
    monkeypatch.setitem(sys.modules, "cronos.lab.impair", fake)
    with Lab.create(["linux-orphan2", "synproxy"], impair="SPEC") as lab:
        t1, t2 = lab.targets
        assert calls == [(t1.netns, "SPEC"), (t2.gateway_ns, "SPEC")]


def test_target_json_round_trip():
    t = LabTarget("p", "10.77.1.2", (80, 1234), "cronos-abcdef-t1", "linux",
                  {"SYN_RCVD": (1000, 2000)}, "n", None)  # fmt: skip
    assert LabTarget.from_json(json.loads(json.dumps(t.to_json()))) == t


# -- real namespaces ----------------------------------------------------------------


@needs_netns
@pytest.mark.parametrize("which", [0, 1])
def test_servers_answer_from_scanner_ns(labs, which):
    lab = labs[which]
    results = _clients(lab)
    for t in lab.targets:  # synproxy included: a kernel connect() through the proxy
        assert t.ip6, t.profile  # every kernel profile over IPv6 too
        for addr in (t.ip, t.ip6):
            assert results[addr] == {"http": "HTTP/1.0 200 OK", "sink_eof": True}, t.profile


@needs_netns
def test_naming_and_state(labs):
    a, b = labs
    assert a.id != b.id and re.fullmatch(r"[0-9a-f]{6}", a.id)
    rec = json.loads((state_mod.STATE_DIR / f"{a.id}.json").read_text())
    assert rec["owner"]["pid"] == os.getpid() and rec["persistent"] is False
    assert set(rec["namespaces"]) == set(_netns_of(a.id))
    assert all(n.startswith(f"cr{a.id}") and len(n) <= 15 for n in rec["interfaces"])
    assert f"cr{a.id}" not in _root_links()  # nothing in the root namespace
    assert [t.profile for t in a.targets] == KERNEL_PROFILES
    assert all(a.servers_alive().values())
    assert a.id in [x.id for x in Lab.list()]


@needs_netns
def test_sysctls_and_route_applied(labs):
    by = {t.profile: t for t in labs[0].targets}

    def sysctl(ns, key):
        out = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key],
                             capture_output=True, text=True).stdout  # fmt: skip
        return out.strip()

    assert sysctl(by["linux-synack2"].netns, "net.ipv4.tcp_synack_retries") == "2"
    assert sysctl(by["linux-orphan2"].netns, "net.ipv4.tcp_orphan_retries") == "2"
    routes = subprocess.run(["ip", "-n", by["linux-rto20"].netns, "route"],
                            capture_output=True, text=True).stdout  # fmt: skip
    assert "rto_min lock 20ms" in routes or "rto_min 20ms" in routes


@needs_netns
def test_synproxy_rules_only_in_router_ns(labs):
    t = next(t for t in labs[0].targets if t.profile == "synproxy")
    rules = subprocess.run(["ip", "netns", "exec", t.gateway_ns, "iptables", "-S", "FORWARD"],
                           capture_output=True, text=True).stdout  # fmt: skip
    assert "SYNPROXY" in rules
    assert t.gateway_ns.startswith(f"cronos-{labs[0].id}-r")


@needs_netns
def test_synack_schedule_is_real(labs):
    """linux-orphan2 (tcp_synack_retries=1): one retransmitted SYN-ACK after ~1 s."""
    lab = labs[1]
    t = next(t for t in lab.targets if t.profile == "linux-orphan2")
    script = r"""
import sys, time
from scapy.all import IP, TCP, AsyncSniffer, conf, send
conf.verb = 0
ip = sys.argv[1]
sn = AsyncSniffer(filter=f"tcp and src host {ip} and src port 80", store=True)
sn.start(); time.sleep(0.5)
send(IP(dst=ip) / TCP(sport=40404, dport=80, flags="S", seq=1000))
time.sleep(2.5); pk = sn.stop()
print(" ".join(f"{float(p.time):.6f}" for p in pk if p[TCP].flags == "SA"))
"""
    ns = lab.scanner_ns
    # the scanner's own kernel must not reset the half-open connection
    subprocess.run(["ip", "netns", "exec", ns, "nft", "add table inet crt; add chain inet crt o "
                    "{ type filter hook output priority 0; tcp flags & rst == rst drop; }"],
                   check=True)  # fmt: skip
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, t.ip],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete table inet crt"], check=True)
    times = [float(x) for x in out.stdout.split()]
    assert len(times) == 2, out.stderr
    assert 900 < (times[1] - times[0]) * 1000 < 1200


@needs_netns
def test_destroy_leaves_nothing():
    lab = Lab.create(["linux-default", "synproxy"])
    pids = list(lab.record.pids)
    assert len(_netns_of(lab.id)) == 4
    lab.destroy()
    _gone(lab, pids)
    lab.destroy()  # idempotent


_FAILED: list[tuple[str, list[dict]]] = []


def _failing_setup(ctx, index):
    """Half-builds a target (namespace + running servers), then fails."""
    ns = ctx.new_netns(f"t{index}")
    ctx.start_servers(ns)
    _FAILED.append((ctx.id, ctx.record.pids))
    raise KeyboardInterrupt if ctx.profile.notes == "kbd" else RuntimeError("boom")


@needs_netns
@pytest.mark.parametrize("exc,notes", [(RuntimeError, ""), (KeyboardInterrupt, "kbd")])
def test_failed_creation_cleans_up(monkeypatch, exc, notes):
    bad = Profile("bad", "fails", "linux", f"{__name__}:_failing_setup", notes=notes)
    monkeypatch.setitem(PROFILES, "bad", bad)
    with pytest.raises(exc):
        Lab.create(["linux-default", "bad"])
    lab_id, pids = _FAILED.pop()
    assert len(pids) == 2  # linux-default's servers and the bad one's
    _gone(Lab(state_mod.LabRecord(lab_id, [])), pids)


@needs_netns
def test_context_manager_destroys_on_exception():
    with pytest.raises(ZeroDivisionError), Lab.create(["linux-orphan2"]) as lab:
        pids = list(lab.record.pids)
        1 / 0  # noqa: B018
    _gone(lab, pids)


@needs_netns
def test_sigkilled_creator_is_cleaned_up(monkeypatch):
    code = (
        "import sys, time\nfrom cronos.lab import Lab\n"
        "lab = Lab.create(['linux-default', 'synproxy'])\n"
        "print(lab.id, flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        lab_id = proc.stdout.readline().strip()
        assert re.fullmatch(r"[0-9a-f]{6}", lab_id)
        pids = list(Lab.load(lab_id).record.pids)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(_netns_of(lab_id)) == 4
    assert all(state_mod.proc_alive(e["pid"], e["start"]) for e in pids)  # orphans now
    monkeypatch.setattr(lab_mod, "ORPHAN_GRACE_S", 1e9)  # leave other people's namespaces
    removed = cleanup_stale()
    assert lab_id in removed
    _gone(Lab(state_mod.LabRecord(lab_id, [])), pids)


@needs_netns
def test_sigkill_mid_creation_is_cleaned_up(monkeypatch):
    code = f"from cronos.lab import Lab\nLab.create({KERNEL_PROFILES!r})\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    mine: list[state_mod.LabRecord] = []
    while not mine and time.monotonic() < deadline:  # wait for its first namespace
        recs = [lab.record for lab in Lab.list()]
        mine = [r for r in recs if r.owner.get("pid") == proc.pid and r.namespaces]
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert mine, "the creator never recorded a namespace"
    rec = state_mod.LabRecord.load(mine[0].id)
    assert len(rec.targets) < len(KERNEL_PROFILES)  # really killed halfway
    monkeypatch.setattr(lab_mod, "ORPHAN_GRACE_S", 1e9)
    assert rec.id in cleanup_stale()
    _gone(Lab(rec), rec.pids)


@needs_netns
def test_orphan_namespace_detection(monkeypatch):
    name = f"cronos-{os.urandom(3).hex()}-x"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert lab_mod._orphans([name], set(), everything=False) == []  # too young
        monkeypatch.setattr(lab_mod, "ORPHAN_GRACE_S", 0.0)
        time.sleep(0.05)
        assert lab_mod._orphans([name], set(), everything=False) == [name]
        assert lab_mod._orphans([name], {name.split("-")[1]}, everything=False) == []
        assert state_mod.teardown_namespace(name) == ""
        assert name not in state_mod.list_netns()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert state_mod.teardown_namespace("eth0") != ""  # never anything else


@needs_netns
def test_cli_up_status_down():
    cli = [sys.executable, "-m", "cronos", "lab"]
    up = subprocess.run([*cli, "up", "-P", "linux-synack2"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    lab_id = re.search(r"lab ([0-9a-f]{6}) up", up.stdout).group(1)
    try:
        assert f"scan it: cron-os scan --netns cronos-{lab_id}-scan 10.77.1.2 -p 80" in up.stdout
        assert "1.02, 2.02 s" in up.stdout
        st = subprocess.run([*cli, "status"], capture_output=True, text=True).stdout
        assert f"lab {lab_id}" in st and "servers up" in st
    finally:
        down = subprocess.run([*cli, "down", lab_id], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert _netns_of(lab_id) == []
    bad = subprocess.run([*cli, "up", "-P", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "valid:" in bad.stderr
