"""Architecture verdicts, table-driven, from hand-built observations (no network).

The matcher runs for real on a two-signature database; nmap's view comes from
recorded XML (``tests/data/nmap``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from cronos.analysis.architecture import KINDS, infer, match_by_state
from cronos.analysis.db import Database, parse_db_text
from cronos.analysis.match import match
from cronos.model import Method, Observation, StateFingerprint, Status, SynAckFeatures
from cronos.net.nmap import NmapHost, NmapPort, parse_nmap_xml
from cronos.render.merged import WIDTH, render_merged
from cronos.render.nmapxml import cronos_lines

DATA = Path(__file__).parent / "data" / "nmap"
S, L, F = Method.SYN_RCVD, Method.LAST_ACK, Method.FIN_WAIT1

DB_TEXT = """
Fingerprint Linux 5.x (tcp_synack_retries=2)
Class Linux | Linux | 5.X | general purpose
CPE cpe:/o:linux:linux_kernel:5
Source test hand-written
CronOS_Hdr(W=FAF0%TTL=64%DF=Y%ID=0%MSS=1460%O=MSTNW%WS=7)
CronOS_Syn(nbPkt=2%Time=40%p=1000000%p=2000000)
CronOS_LastAck(nbPkt=8%Time=60%Connect=1000%p=201000%p=402000%p=804000%p=1608000%p=3216000%p=6432000%p=12864000%p=25728000)
CronOS_FinWait(nbPkt=8%Time=60%Connect=1000%p=201000%p=402000%p=804000%p=1608000%p=3216000%p=6432000%p=12864000%p=25728000)

Fingerprint Windows 2000 (talk)
Class Microsoft | Windows | 2000 | general purpose
Source test hand-written
CronOS_Syn(nbPkt=2%Time=30%p=2806316%p=6010910)
CronOS_LastAck(nbPkt=3%Time=30%Connect=134571%p=2918695%p=5909092%p=12014080)
CronOS_FinWait(nbPkt=3%Time=30%Connect=136213%p=2918695%p=5909092%p=12014080)
"""
DB = Database(tuple(parse_db_text(DB_TEXT, "test.db")))

LINUX_HDR = SynAckFeatures(0xFAF0, 64, True, 0, 1460, "MSTNW", 7)
SYNPROXY_HDR = SynAckFeatures(0, 64, True, 0, 1460, "MSTNW", 7)  # as measured in the lab
LINUX_SYN = (1_000_000, 2_000_000)
LINUX_CLOSE = (201_000, 402_000, 804_000, 1_608_000, 3_216_000, 6_432_000, 12_864_000)
WIN_SYN = (2_806_316, 6_010_910)
WIN_CLOSE = (2_918_695, 5_909_092, 12_014_080)


def obs(method, gaps=(), status=Status.OK, *, time_s=40, connect=None, feats=None, port=80,
        try_index=1, note="", ttl_in=None) -> Observation:  # fmt: skip
    if connect is None and method is not S:
        connect = 1000
    fp = StateFingerprint(method, time_s, tuple(gaps), connect)
    return Observation("10.77.1.2", port, method, try_index, status, fp, feats,
                       note=note, ttl_in=ttl_in)  # fmt: skip


def nmap_file(name: str) -> NmapHost:
    return next(iter(parse_nmap_xml((DATA / name).read_text()).values()))


def nmap_with_ports(base: NmapHost, **states) -> NmapHost:
    ports = tuple(NmapPort(int(p[1:]), "tcp", s) for p, s in states.items())
    return NmapHost(base.address, base.status, ports, base.osmatches)


LINUX = [obs(S, LINUX_SYN, feats=LINUX_HDR), obs(L, LINUX_CLOSE), obs(F, LINUX_CLOSE)]
SYNPROXY = [obs(S, (), feats=SYNPROXY_HDR), obs(L, LINUX_CLOSE), obs(F, LINUX_CLOSE)]

CASES = {
    # name: (observations, nmap XML file or host or None, expected kind, evidence substring)
    "linux alone": (LINUX, None, "consistent", "LAST_ACK: Linux 5.x"),
    "linux with nmap": (LINUX, "linux_lab.xml", "consistent", "nmap: Linux 5.3 - 5.4 (96%)"),
    "synproxy, no nmap": (SYNPROXY, None, "syn-proxy", "no retransmission in 40 s"),
    "synproxy window 0": (SYNPROXY, None, "syn-proxy", "window 0"),
    "synproxy with nmap": (SYNPROXY, "synproxy_lab.xml", "syn-proxy", "nmap: Linux 2.6.18"),
    "synproxy, SYN only retransmitted by the relay": (
        [obs(S, LINUX_SYN, feats=LINUX_HDR),
         obs(L, LINUX_CLOSE, ttl_in=63), obs(F, LINUX_CLOSE, ttl_in=63)],
        None, "syn-proxy", "SYN-ACK TTL 64 but closing-state packets arrive with TTL 63",
    ),
    "talk: Nokia relay in front of Windows": (
        [obs(L, WIN_CLOSE, time_s=30, connect=134_571),
         obs(F, WIN_CLOSE, time_s=30, connect=136_213)],
        "relay.xml", "syn-proxy", "nmap (SYN-based) guesses Nokia M1122 DSL Router",
    ),
    "states disagree on family": (
        [obs(S, WIN_SYN, time_s=30), obs(L, LINUX_CLOSE), obs(F, LINUX_CLOSE)],
        None, "syn-proxy", "SYN_RCVD says Windows, LAST_ACK says Linux",
    ),
    "filtered LAST_ACK, ok SYN": (
        [obs(S, LINUX_SYN, feats=LINUX_HDR), obs(L, (), Status.FILTERED)],
        None, "filtering-firewall", "port 80: LAST_ACK filtered while SYN_RCVD answered",
    ),
    "closed in one state, open in another": (
        [obs(S, LINUX_SYN, feats=LINUX_HDR), obs(F, (), Status.CLOSED)],
        None, "filtering-firewall", "FIN_WAIT1 closed",
    ),
    "nmap filtered, Cron-OS answered": (
        LINUX, nmap_with_ports(nmap_file("linux_lab.xml"), p80="filtered"),
        "filtering-firewall", "nmap sees it filtered",
    ),
    "nothing answered": (
        [obs(S, (), Status.FILTERED), obs(L, (), Status.FILTERED)],
        None, "filtering-firewall", "no state answered",
    ),
    "lost SYN-ACK (gap = sum of two)": (
        [obs(S, (3_000_000,), feats=LINUX_HDR), obs(L, LINUX_CLOSE), obs(F, LINUX_CLOSE)],
        None, "non-ideal-network", "assumes 1 lost packet",
    ),
    "RTT jitter across tries": (
        [obs(S, LINUX_SYN, feats=LINUX_HDR), obs(L, LINUX_CLOSE, connect=1000),
         obs(L, LINUX_CLOSE, connect=180_000, try_index=2)],
        None, "non-ideal-network", "handshake RTT varies across tries",
    ),
    "our SYN lost": (
        [obs(S, LINUX_SYN, feats=LINUX_HDR), obs(L, LINUX_CLOSE, note="SYN sent 2 times")],
        None, "non-ideal-network", "our SYN was lost",
    ),
    "unknown schedule": (
        [obs(S, (7_000_000, 7_000_000, 7_000_000))], None, "not-in-bases",
        "SYN_RCVD: no match in the database",
    ),
    "unknown schedule, nmap has nothing": (
        [obs(S, (7_000_000, 7_000_000, 7_000_000))],
        NmapHost("10.77.1.2", "up"), "not-in-bases", "nmap: no OS match at all",
    ),
    "SYN-only scan, nmap disagrees": (
        [obs(S, WIN_SYN, time_s=30)], "linux_lab.xml", "not-in-bases", "one base lacks this OS",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_verdict(name):
    observations, nmap, kind, evidence = CASES[name]
    if isinstance(nmap, str):
        nmap = nmap_file(nmap)
    v = infer(observations, match_by_state(observations, DB), nmap)
    assert v.kind == kind, v
    assert v.kind in KINDS and v.summary
    assert any(evidence in line for line in v.evidence), v.evidence


def test_verdict_with_one_combined_result():
    """A single MatchResult over every state is accepted (no per-state view)."""
    v = infer(LINUX, match(LINUX, DB), nmap_file("linux_lab.xml"))
    assert v.kind == "consistent"
    assert any(line.startswith("Cron-OS all states: Linux") for line in v.evidence)


def test_syn_proxy_without_any_match():
    """The SYN-state signal alone suffices, even with no match result at all."""
    assert infer(SYNPROXY, {}, None).kind == "syn-proxy"


def test_match_result_duck_typing():
    fake = SimpleNamespace(no_match=False, candidates=(), verdict="X", verdict_class="Linux",
                           confidence=1.0, ties=1)  # fmt: skip
    v = infer(LINUX, {S: fake, L: fake}, None)
    assert v.kind == "consistent"


def test_merged_report_talk_case():
    observations = CASES["talk: Nokia relay in front of Windows"][0]
    nmap = nmap_file("relay.xml")
    verdict = infer(observations, match_by_state(observations, DB), nmap)
    text = render_merged("unos.qq.part", nmap, cronos_lines(observations), verdict)
    lines = text.splitlines()
    assert max(len(x) for x in lines) <= WIDTH
    assert "nmap's view" in lines[2] and "Cron-OS's view" in lines[2]
    assert "Nokia M1122 DSL Router (91%)" in text
    assert any("CronOS_LastAck(nbPkt=3" in x for x in lines)
    assert "T1(Resp=Y%DF=Y%W=FAF0" in text
    assert "Architecture: SYN proxy / relay in front of the server [syn-proxy]" in text
    assert (
        "  - nmap (SYN-based) guesses Nokia M1122 DSL Router (91%), LAST_ACK says Windows" in text
    )


def test_merged_report_without_nmap():
    verdict = infer(SYNPROXY, match_by_state(SYNPROXY, DB), None)
    text = render_merged("10.77.2.2", None, cronos_lines(SYNPROXY), verdict)
    assert "(nmap not run: add --nmap)" in text
    assert "[syn-proxy]" in text
    assert max(len(x) for x in text.splitlines()) <= WIDTH


def test_recorded_lab_run_with_builtin_database():
    """A real lab run: Cron-OS (slf, port 80) on a Linux target and on a Linux
    server behind iptables SYNPROXY, nmap -O run while Cron-OS was scanning."""
    import json

    from cronos.analysis.db import load_db

    records = (DATA / "lab_during_cronos_scan.jsonl").read_text().splitlines()
    observations = [Observation.from_dict(json.loads(r)) for r in records]
    hosts = parse_nmap_xml((DATA / "lab_during_cronos_scan.xml").read_text())
    db = load_db()
    verdicts = {}
    for ip in ("10.77.1.2", "10.77.2.2"):
        mine = [o for o in observations if o.target == ip]
        verdicts[ip] = infer(mine, match_by_state(mine, db), hosts[ip])
    assert verdicts["10.77.2.2"].kind == "syn-proxy"
    assert verdicts["10.77.1.2"].kind != "syn-proxy"
    # without nmap, Cron-OS's own states already say so
    proxied = [o for o in observations if o.target == "10.77.2.2"]
    assert infer(proxied, match_by_state(proxied, db), None).kind == "syn-proxy"


def _decide(observations, db, nmap=None):
    from cronos.analysis.verdict import decide

    return decide(observations[0].target, observations, db, architecture=True, nmap=nmap)


def test_one_stack_explaining_every_state_is_not_a_proxy():
    """lwIP in `make demo` (one try per state): its SYN_RCVD alone says lwIP,
    its closing states alone lean to libslirp / Windows NT (one state cannot
    tell them apart), yet the lwIP block explains all three together: one host,
    not a SYN relay. The per-state disagreement stays in the evidence."""
    from cronos.analysis.db import load_db

    hdr = SynAckFeatures(0xFFFF, 255, False, 3, 1460, "MNW", 1)
    lwip = [
        obs(S, (2_889_838, 6_003_128), time_s=29, feats=hdr),
        obs(L, (2_375_795, 5_002_653, 10_005_754), time_s=37, connect=12_641),
        obs(F, (1_863_192, 4_000_516, 8_005_975, 16_004_526), time_s=50, connect=25_228),
    ]
    v = _decide(lwip, load_db())
    assert "[lab lwip]" in v.result.verdict
    assert v.architecture.kind == "consistent", v.architecture.evidence
    assert any("one signature explains every state" in e for e in v.architecture.evidence)


def test_relay_still_seen_through_the_verdict_path():
    """The same path with the states of two stacks (Windows' SYN_RCVD, Linux's
    closing states): no signature explains them together, so the states'
    disagreement is a SYN relay's sign; and the recorded SYNPROXY lab run is
    still one through ``decide``."""
    import json

    from cronos.analysis.db import load_db

    mixed = [obs(S, WIN_SYN, time_s=30), obs(L, LINUX_CLOSE), obs(F, LINUX_CLOSE)]
    assert _decide(mixed, DB).architecture.kind == "syn-proxy"
    records = (DATA / "lab_during_cronos_scan.jsonl").read_text().splitlines()
    observations = [Observation.from_dict(json.loads(r)) for r in records]
    proxied = [o for o in observations if o.target == "10.77.2.2"]
    assert _decide(proxied, load_db()).architecture.kind == "syn-proxy"
