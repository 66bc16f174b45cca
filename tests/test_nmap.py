"""The nmap adapter and the ``-oX`` writer.

Parsing is tested on recorded nmap 7.93 XML (``tests/data/nmap``: two lab
recordings, the talk's Nokia relay hand-crafted, a truncated file and an XXE
attempt); running is tested with a fake ``nmap`` on PATH, and once for real
in a lab (``netns``). The writer's output is validated against nmap's own DTD
and read back by python-libnmap and by our parser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cronos.analysis.architecture import infer, match_by_state
from cronos.errors import DependencyError
from cronos.model import Method, Observation, StateFingerprint, Status, SynAckFeatures
from cronos.net.nmap import (
    NmapHost,
    OsClass,
    OsMatch,
    family_of,
    nmap_command,
    parse_nmap_xml,
    run_nmap,
)
from cronos.render.nmapxml import (
    NMAP_PREFIX,
    HostReport,
    osmatches_from,
    port_states,
    to_xml,
    write_nmap_xml,
)

DATA = Path(__file__).parent / "data" / "nmap"
DTD = Path("/usr/share/nmap/nmap.dtd")
ROOT = os.geteuid() == 0


def load(name: str) -> dict[str, NmapHost]:
    return parse_nmap_xml((DATA / name).read_text())


# --- parsing recorded XML ---------------------------------------------------------


def test_linux_lab_recording():
    hosts = load("linux_lab.xml")
    assert list(hosts) == ["10.77.1.2"]  # the MAC <address> is not a key
    h = hosts["10.77.1.2"]
    assert h.status == "up"
    assert [(p.port, p.protocol, p.state, p.service) for p in h.ports] == [
        (80, "tcp", "open", "http"),
        (1234, "tcp", "open", "hotline"),
    ]
    assert len(h.osmatches) == 10
    best = h.best
    assert (best.name, best.accuracy, best.line) == ("Linux 5.3 - 5.4", 96, 68140)
    assert best.classes == (
        OsClass("Linux", "Linux", "5.X", "general purpose", 96, ("cpe:/o:linux:linux_kernel:5",)),
    )
    assert [m.accuracy for m in h.osmatches] == sorted(
        (m.accuracy for m in h.osmatches), reverse=True
    )
    assert not h.exact
    assert h.top_families() == {"Linux"}
    assert h.uptime_s == 4 and h.lastboot == "Fri Nov 27 11:27:24 2026"
    assert h.fingerprint is None  # nmap prints none when it has guesses and -v is off


def test_synproxy_lab_recording():
    """nmap sees the router's SYNPROXY: Linux and embedded guesses tie at 93%."""
    h = load("synproxy_lab.xml")["10.77.2.2"]
    assert h.best.name == "Linux 2.6.18" and h.best.accuracy == 93
    assert h.top_families() == {"Linux", "embedded"}
    assert h.port_state(80) == "open" and h.port_state(1) is None


def test_relay_like_the_talk():
    h = load("relay.xml")["192.0.2.80"]
    assert h.best.name == "Nokia M1122 DSL Router"
    assert family_of(h.best) == "embedded"
    assert h.fingerprint.splitlines()[1] == "T1(Resp=Y%DF=Y%W=FAF0%ACK=S++%Flags=AS%Ops=MNWNNT)"


def test_family_prefers_a_concrete_family():
    m = OsMatch("ASUS RT-N56U WAP (Linux 3.4)", 93, 8398, (
        OsClass("Asus", "embedded", None, "WAP", 93),
        OsClass("Linux", "Linux", "3.X", "WAP", 93),
    ))  # fmt: skip
    assert family_of(m) == "Linux"
    assert family_of(OsMatch("x", 50, None)) is None


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ((DATA / "broken.xml").read_text(), "not valid XML"),
        ((DATA / "xxe.xml").read_text(), "refused"),
        ('<?xml version="1.0"?><!DOCTYPE nmaprun SYSTEM "http://example.invalid/x.dtd">'
         "<nmaprun/>", "refused"),
        ('<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><nmaprun>&b;</nmaprun>',
         "refused"),
        ("<html><body>nope</body></html>", "root element <html>"),
        ("", "not valid XML"),
        ('<nmaprun><runstats><finished exit="error" errormsg="boom"/></runstats></nmaprun>',
         "nmap error: boom"),
    ],
)  # fmt: skip
def test_bad_xml_is_a_dependency_error(text, cause):
    with pytest.raises(DependencyError, match=re.escape(cause)) as exc:
        parse_nmap_xml(text)
    assert "\n" not in str(exc.value)


# --- running, with a fake nmap ------------------------------------------------------


@pytest.fixture
def fake_nmap(tmp_path, monkeypatch):
    """Install a fake ``nmap`` script first on PATH; returns a function setting its body."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def install(body: str) -> Path:
        script = bindir / "nmap"
        script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "argv"}\n{body}\n')
        script.chmod(0o755)
        return tmp_path / "argv"

    return install


def test_run_nmap_parses_stdout(fake_nmap):
    argv = fake_nmap(f"cat {DATA / 'linux_lab.xml'}")
    hosts = run_nmap(["10.77.1.2"], [80, 1234])
    assert hosts["10.77.1.2"].best.name == "Linux 5.3 - 5.4"
    assert argv.read_text().split() == [
        "-O", "--osscan-guess", "-Pn", "-n", "--max-os-tries", "1",
        "-p", "80,1234", "-oX", "-", "--", "10.77.1.2",
    ]  # fmt: skip


def test_run_nmap_failure_names_the_cause(fake_nmap):
    fake_nmap('echo "Failed to resolve \\"nope\\"." >&2; echo second >&2; exit 1')
    with pytest.raises(
        DependencyError, match=r'^nmap failed \(exit 1\): Failed to resolve "nope"\.$'
    ):
        run_nmap(["nope"], [80])


def test_run_nmap_garbage(fake_nmap):
    fake_nmap("echo 'Starting Nmap 7.93'")
    with pytest.raises(DependencyError, match="not valid XML"):
        run_nmap(["10.0.0.1"], [80])


def test_run_nmap_timeout(fake_nmap):
    fake_nmap("sleep 5")
    with pytest.raises(DependencyError, match="did not finish within 0.5 s"):
        run_nmap(["10.0.0.1"], [80], timeout_s=0.5)


def test_nmap_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DependencyError, match=r"^nmap is not installed \(apt install nmap\)$"):
        run_nmap(["10.0.0.1"], [80])


def test_netns_command():
    argv = nmap_command(["10.77.1.2"], [80], ("-T4",), netns="cronos-x-scan")
    assert argv[:4] == ["ip", "netns", "exec", "cronos-x-scan"]
    assert argv[4].endswith("nmap") and "-T4" in argv and argv[-1] == "10.77.1.2"


def test_no_targets_runs_nothing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert run_nmap([], [80]) == {}


# --- the -oX writer -------------------------------------------------------------------


LINUX_HDR = SynAckFeatures(0xFAF0, 64, True, 0, 1460, "MSTNW", 7)
LINUX_CLOSE = (201_000, 402_000, 804_000, 1_608_000, 3_216_000, 6_432_000, 12_864_000)


def _obs(method, gaps, status=Status.OK, port=80, feats=None):
    fp = StateFingerprint(method, 40, tuple(gaps), None if method is Method.SYN_RCVD else 1000)
    return Observation("10.77.1.2", port, method, 1, status, fp, feats)


OBS = (
    _obs(Method.SYN_RCVD, (1_000_000, 2_000_000), feats=LINUX_HDR),
    _obs(Method.LAST_ACK, LINUX_CLOSE),
    _obs(Method.FIN_WAIT1, LINUX_CLOSE),
    _obs(Method.SYN_RCVD, (), Status.FILTERED, port=1234),
    _obs(Method.SYN_RCVD, (), Status.CLOSED, port=22),
)


def _report(with_nmap: bool) -> HostReport:
    from test_architecture import DB  # the two-signature test database

    result = match_by_state(OBS[:3], DB)[Method.LAST_ACK]
    cands = osmatches_from(result)
    nmap = load("linux_lab.xml")["10.77.1.2"] if with_nmap else None
    return HostReport("10.77.1.2", OBS, cands, nmap=nmap)


def _write(tmp_path, reports) -> Path:
    path = tmp_path / "out.xml"
    write_nmap_xml(path, reports, args="cron-os -m slf -p 80,1234 --nmap -oX out.xml 10.77.1.2",
                   start=1795778845.0, end=1795778905.5)  # fmt: skip
    return path


def test_port_states_from_observations():
    assert port_states(OBS) == {22: "closed", 80: "open", 1234: "filtered"}


@pytest.mark.parametrize("with_nmap", [False, True])
def test_writer_output_is_dtd_valid(tmp_path, with_nmap):
    xmllint = shutil.which("xmllint")
    if xmllint is None or not DTD.exists():
        pytest.skip("needs xmllint (apt install libxml2-utils) and nmap's DTD")
    path = _write(tmp_path, [_report(with_nmap), HostReport("10.77.9.9", status="down")])
    out = subprocess.run([xmllint, "--noout", "--dtdvalid", str(DTD), str(path)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_writer_round_trips_through_our_parser(tmp_path):
    rep = _report(with_nmap=True)
    h = parse_nmap_xml(_write(tmp_path, [rep]).read_text())["10.77.1.2"]
    assert {p.port: p.state for p in h.ports} == {22: "closed", 80: "open", 1234: "filtered"}
    nmap_own = tuple(
        OsMatch(NMAP_PREFIX + m.name, m.accuracy, m.line, m.classes) for m in rep.nmap.osmatches
    )
    assert sorted(h.osmatches, key=repr) == sorted(rep.candidates + nmap_own, key=repr)
    assert h.fingerprint.splitlines()[:2] == [
        LINUX_HDR.line(),
        "CronOS_Syn(nbPkt=2%Time=40%p=1000000%p=2000000)",
    ]
    assert h.uptime_s == 4


def test_writer_read_back_by_libnmap(tmp_path):
    parser = pytest.importorskip("libnmap.parser")
    rep = _report(with_nmap=True)
    report = parser.NmapParser.parse_fromfile(str(_write(tmp_path, [rep])))
    (host,) = report.hosts
    assert host.address == "10.77.1.2" and host.is_up()
    assert sorted(host.get_ports()) == [(22, "tcp"), (80, "tcp"), (1234, "tcp")]
    assert host.get_open_ports() == [(80, "tcp")]
    got = [(m.name, m.accuracy, m.line) for m in host.os.osmatches]
    want = [(m.name, m.accuracy, m.line) for m in rep.candidates]
    want += [(NMAP_PREFIX + m.name, m.accuracy, m.line) for m in rep.nmap.osmatches]
    assert got == want
    assert host.os.osmatches[0].osclasses[0].osfamily == "Linux"
    assert host.os.fingerprints[0].startswith("CronOS_Hdr(W=FAF0%TTL=64")
    assert report.summary.startswith("Cron-OS done at")


def test_writer_candidates_from_the_matcher():
    rep = _report(with_nmap=False)
    best = rep.candidates[0]
    assert best.name == "Linux 5.x (tcp_synack_retries=2)"
    # the posterior, in percent: a two-signature database leaves room for an unknown stack
    assert 50 <= best.accuracy <= 100 and best.line == 2  # line of the block in test.db
    assert best.classes[0].family == "Linux"
    assert best.classes[0].cpes == ("cpe:/o:linux:linux_kernel:5",)
    assert "CronOS_LastAck(nbPkt=7" in to_xml([rep], args="x", start=0, end=1)


# --- for real, in a lab ------------------------------------------------------------------


NFT_PROBE_TABLE = """
table inet nmaptest {{
    set flows {{ type ipv4_addr . inet_service . inet_service; elements = {{ {ip} . 80 . 61000 }} }}
    chain out {{
        type filter hook output priority filter; policy accept;
        tcp flags & rst == rst ip daddr {ip} counter
        tcp flags & rst == rst ip daddr . tcp dport . tcp sport @flows counter drop
    }}
}}
"""


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("nmap") is None, reason="nmap is not installed")
@pytest.mark.timeout(180)
def test_nmap_for_real_in_a_lab(make_lab):
    """nmap -O on a lab Linux target, with a Cron-OS-style RST table in place:
    nmap's RSTs (other source ports) pass; the table drops none of them."""
    lab = make_lab(["linux-synack2"])
    ip = lab.targets[0].ip
    ns = lab.scanner_ns
    nft = ["ip", "netns", "exec", ns, "nft"]
    subprocess.run([*nft, "-f", "-"], input=NFT_PROBE_TABLE.format(ip=ip), text=True,
                   check=True)  # fmt: skip
    t0 = time.monotonic()
    hosts = run_nmap([ip], [80, 1234], netns=ns, timeout_s=120)
    elapsed = time.monotonic() - t0
    listing = subprocess.run([*nft, "list", "table", "inet", "nmaptest"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    h = hosts[ip]
    assert h.status == "up" and h.port_state(80) == "open"
    assert "Linux" in h.top_families(), h.osmatches[:3]
    all_rst, dropped = (int(n) for n in re.findall(r"counter packets (\d+)", listing))
    assert all_rst > 0  # nmap's half-open probes made the kernel send RSTs...
    assert dropped == 0  # ...and none matched a Cron-OS flow
    print(f"nmap -O on one lab target: {elapsed:.2f} s", file=sys.stderr)
    assert infer([], {}, h).kind in ("consistent", "not-in-bases")
