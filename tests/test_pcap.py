"""Packet files and replay: pure tests on synthetic captures, one real lab test."""

import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cronos.model import Method, Status
from cronos.net.dedupe import dedupe
from cronos.net.pcapio import PcapError, PcapWriter, load_pcap, open_pcap_sink, read_pcap
from cronos.packet import ACK, FIN, PSH, RST, SYN, Segment, build_ip
from cronos.probes import PROBES, ProbeConfig
from cronos.scan.core import CoreConfig, ScanCore
from cronos.scan.passive import passive
from cronos.scan.replay import analyse_pcap, replay_own
from cronos.scan.sim import SimNet, StackPeer

from helpers import assert_ran, cronos

T0 = 1795779084.502709123  # a capture time of today's magnitude (float resolution ~240 ns)
US, SRV = "10.0.0.1", "10.0.0.2"


# --- a scripted peer, and the scan core driven in simulated time --------------------------


def _srv(flags, seq, ack, sport=80, dport=40000, payload=b"", options=(), window=29200):
    return Segment(SRV, US, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags,
                   window=window, payload=payload, options=options, ttl=57)  # fmt: skip


def _peer():
    opts = (("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7))
    return StackPeer(SRV, 80, synack_gaps_s=(1.0, 2.0), synack_rst_s=4.0,
                     fin_gaps_s=(0.2, 0.4, 0.8), fin_rst_s=1.6, ttl=57, options=opts)  # fmt: skip


def _simulate(probes, start=T0, timeout_s=5.0) -> SimNet:
    """The scan core against a scripted server, 15 ms each way, timers served
    1.3 ms late; ``probes``: (method, our port, our ISN)."""
    net = SimNet(ScanCore(CoreConfig(timeout_s=timeout_s)), [_peer()], timer_lag_s=0.0013)
    for i, (method, port, isn) in enumerate(probes):
        cfg = ProbeConfig(target=SRV, port=80, src_ip=US, src_port=port, isn=isn,
                          timeout_s=timeout_s)  # fmt: skip
        net.launch(cfg, method, start + i * 0.0004)
    net.run()
    return net


@pytest.fixture
def scan_pcap(tmp_path):
    """A '-w' file of three probes run concurrently, and their live observations."""
    path = tmp_path / "scan.pcap"
    methods = (Method.SYN_RCVD, Method.LAST_ACK, Method.FIN_WAIT1)
    net = _simulate([(m, 40000 + i, 1000 * (i + 1)) for i, m in enumerate(methods)])
    live = sorted(net.observations, key=lambda o: methods.index(o.method))
    records = net.captured  # in capture order, as the engine sinks them
    with PcapWriter(path) as w:
        for ts, b in records:
            w.write(ts, b)
    return path, live, records


# --- writing and reading ----------------------------------------------------------------


def test_written_timestamps_and_bytes_read_back_identical(scan_pcap):
    path, _live, records = scan_pcap
    assert read_pcap(path) == records  # floats equal to the bit: same gaps on replay
    data = load_pcap(path)
    assert data.fmt == "pcap-ns" and data.linktypes == (101,) and data.raw_ip
    assert struct.unpack("<I", path.read_bytes()[:4])[0] == 0xA1B23C4D


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump not installed")
def test_tcpdump_reads_our_file(scan_pcap):
    path, _live, records = scan_pcap
    r = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "link-type RAW" in r.stderr
    assert len(r.stdout.splitlines()) == len(records)
    assert "10.0.0.1.40000 > 10.0.0.2.80: Flags [S]" in r.stdout


def test_sink_flushes_every_record(tmp_path):
    """What a SIGKILL leaves: everything written so far is in the file."""
    sink, close = open_pcap_sink(tmp_path / "k.pcap")
    seg = _srv(SYN | ACK, 1, 2)
    sink(T0, build_ip(seg))
    sink(T0 + 1, build_ip(seg))
    assert len(read_pcap(tmp_path / "k.pcap")) == 2  # not closed yet
    close()


# --- replay of our own scans ------------------------------------------------------------


def test_replay_gives_the_live_observations(scan_pcap):
    path, live, _ = scan_pcap
    replayed = replay_own(read_pcap(path), timeout_s=5.0)
    assert [o.method for o in replayed] == [Method.SYN_RCVD, Method.LAST_ACK, Method.FIN_WAIT1]
    for got, want in zip(replayed, live, strict=True):
        assert got.status is Status.OK
        assert got == want  # every field: fingerprint line, arrivals, started_at, notes
    s, lst, fw = replayed
    assert s.fingerprint.gaps_us == (1_000_000, 2_000_000) and s.fingerprint.rst_us == 4_000_000
    assert lst.fingerprint.gaps_us == (200_000, 400_000, 800_000)
    assert fw.fingerprint.connect_us == 30_000 and fw.fingerprint.rst_us == 1_600_000


def test_replay_needs_the_timeout_of_the_scan_only_for_time(scan_pcap):
    path, live, _ = scan_pcap
    replayed = replay_own(read_pcap(path), timeout_s=60.0)
    for got, want in zip(replayed, live, strict=True):
        assert got.fingerprint.gaps_us == want.fingerprint.gaps_us


def test_replay_with_the_key_keeps_only_our_flows(scan_pcap):
    path, _, _ = scan_pcap
    assert replay_own(read_pcap(path), key=b"k" * 16) == []  # ISNs are not its hashes


def test_replay_from_the_targets_packets_only(scan_pcap, tmp_path):
    """A -w file written by an engine that does not capture its own packets."""
    path, live, records = scan_pcap
    theirs = tmp_path / "theirs.pcap"
    with PcapWriter(theirs) as w:
        for ts, b in records:
            if b[12:16] == bytes([10, 0, 0, 2]):
                w.write(ts, b)
    kind, obs = analyse_pcap(theirs, timeout_s=5.0)
    assert kind == "replay"
    assert [o.method for o in obs] == [o.method for o in live]
    for got, want in zip(obs, live, strict=True):
        assert got.fingerprint.gaps_us == want.fingerprint.gaps_us
        assert got.fingerprint.rst_us == want.fingerprint.rst_us
        assert got.fingerprint.connect_us is None
        assert "ours not captured" in got.note


# --- passive extraction ---------------------------------------------------------------


def _ether(ip: bytes, vlan: bool = False) -> bytes:
    head = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02"
    if vlan:
        head += b"\x81\x00\x00\x07"
    return head + b"\x08\x00" + ip


def _write_classic(path, frames, linktype=1, ns=False, endian="<"):
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    with open(path, "wb") as fh:
        fh.write(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
        for ts, frame in frames:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if ns else 1e6))
            fh.write(struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame)


def _cli(a, b, flags, seq, ack, payload=b""):
    return Segment(a[0], b[0], a[1], b[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags,
                   window=502, payload=payload, ttl=64)  # fmt: skip


def _tcpdump_like():
    """Someone else's capture, taken at the client: three series and normal traffic."""
    c1, c2, c3, c4 = ("192.168.1.5", 51000), ("192.168.1.5", 51001), ("192.168.1.5", 51002), (
        "192.168.1.5", 51003)  # fmt: skip
    srv = ("203.0.113.9", 443)
    t, pk = T0, []

    def add(dt, seg, vlan=False):
        pk.append((t + dt, _ether(build_ip(seg), vlan)))

    # 1. LAST_ACK: the client closes first, never ACKs the server's FIN
    add(0.000, _cli(c1, srv, SYN, 100, 0))
    add(0.040, _cli(srv, c1, SYN | ACK, 900, 101))
    add(0.0401, _cli(c1, srv, ACK, 101, 901))
    add(0.0402, _cli(c1, srv, FIN | ACK, 101, 901))
    add(0.080, _cli(srv, c1, ACK, 901, 102))
    add(0.081, _cli(srv, c1, FIN | ACK, 901, 102), vlan=True)
    add(0.081 + 0.240, _cli(srv, c1, FIN | ACK, 901, 102))
    add(0.081 + 0.720, _cli(srv, c1, FIN | ACK, 901, 102), vlan=True)
    add(0.081 + 1.680, _cli(srv, c1, RST, 902, 0))
    # 2. FIN_WAIT1: the server answers and closes first, data + FIN retransmitted
    add(2.000, _cli(c2, srv, SYN, 500, 0))
    add(2.050, _cli(srv, c2, SYN | ACK, 7000, 501))
    add(2.0501, _cli(c2, srv, ACK | PSH, 501, 7001, b"GET / HTTP/1.0\r\n\r\n"))
    add(2.100, _cli(srv, c2, ACK | PSH, 7001, 519, b"x" * 100))
    add(2.1001, _cli(srv, c2, FIN | ACK, 7101, 519))
    add(2.1002, _cli(c2, srv, ACK, 519, 7101))  # data acked, FIN not
    add(2.1001 + 0.3, _cli(srv, c2, FIN | ACK, 7101, 519))
    add(2.1001 + 0.9, _cli(srv, c2, FIN | ACK, 7101, 519))
    # 3. SYN_RCVD: a SYN-ACK nobody acknowledges
    add(5.000, _cli(c3, srv, SYN, 42, 0))
    add(5.030, _cli(srv, c3, SYN | ACK, 3000, 43))
    add(6.030, _cli(srv, c3, SYN | ACK, 3000, 43))
    add(8.030, _cli(srv, c3, SYN | ACK, 3000, 43))
    # 4. a normal connection: nothing retransmitted, nothing to report
    add(9.000, _cli(c4, srv, SYN, 1, 0))
    add(9.030, _cli(srv, c4, SYN | ACK, 10, 2))
    add(9.031, _cli(c4, srv, ACK, 2, 11))
    add(9.032, _cli(c4, srv, FIN | ACK, 2, 11))
    add(9.060, _cli(srv, c4, FIN | ACK, 11, 3))
    add(9.061, _cli(c4, srv, ACK, 3, 12))
    pk.append((t + 9.5, b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28))  # ARP
    pk.append((t + 9.6, b"\xff" * 6 + b"\x02" * 6 + b"\x86\xdd" + b"\x60" + b"\0" * 39))  # IPv6
    return pk


def test_passive_finds_each_series_and_its_state(tmp_path):
    path = tmp_path / "td.pcap"
    _write_classic(path, _tcpdump_like())
    kind, obs = analyse_pcap(path)
    assert kind == "passive"
    by = {o.method: o for o in obs}
    assert sorted(m.value for m in by) == ["f", "l", "s"] and len(obs) == 3
    la, fw, sr = by[Method.LAST_ACK], by[Method.FIN_WAIT1], by[Method.SYN_RCVD]
    for o in obs:
        assert o.target == "203.0.113.9" and o.port == 443 and o.status is Status.OK
        assert o.note.startswith("passive: ")
    assert la.fingerprint.gaps_us == (240_000, 480_000)
    assert la.fingerprint.rst_us == 960_000 and la.fingerprint.connect_us == 40_000
    assert "peer closed first" in la.note and la.src_port == 51000
    assert fw.fingerprint.gaps_us == (300_000, 600_000) and fw.fingerprint.connect_us == 50_000
    assert "203.0.113.9 closed first" in fw.note
    assert sr.fingerprint.gaps_us == (1_000_000, 2_000_000)
    assert sr.features is not None and sr.features.window == 502
    assert sr.arrivals_us == (30_000, 1_030_000, 3_030_000)


def _untag(frame: bytes) -> tuple[bytes, bytes]:
    """(ethertype, payload) of an Ethernet frame, VLAN tag removed."""
    if frame[12:14] == b"\x81\x00":
        return frame[16:18], frame[18:]
    return frame[12:14], frame[14:]


def test_passive_reads_linux_cooked_and_big_endian_nanosecond(tmp_path):
    frames = [(ts, *_untag(f)) for ts, f in _tcpdump_like()]
    sll = [(ts, b"\0\0\0\x01\0\x06" + b"\x02" * 6 + b"\0\0" + et + p) for ts, et, p in frames]
    _write_classic(tmp_path / "sll.pcap", sll, linktype=113, ns=True, endian=">")
    want = [(o.method, o.fingerprint) for o in passive(read_pcap_eth(_tcpdump_like()))]
    got = passive(read_pcap(tmp_path / "sll.pcap"))
    assert [(o.method, o.fingerprint) for o in got] == want and len(want) == 3
    sll2 = [(ts, et + b"\0\0" + b"\0\0\0\x02" + b"\0\x01\0\x06" + b"\x02" * 8 + p)
            for ts, et, p in frames]  # fmt: skip
    _write_classic(tmp_path / "sll2.pcap", sll2, linktype=276)
    got = passive(read_pcap(tmp_path / "sll2.pcap"))
    assert [(o.method, o.fingerprint) for o in got] == want


def read_pcap_eth(frames):
    return [(ts, p) for ts, f in frames for et, p in [_untag(f)] if et == b"\x08\x00"]


def test_pcapng_from_scapy(tmp_path):
    from scapy.layers.inet import IP
    from scapy.utils import PcapNgWriter

    path = tmp_path / "x.pcapng"
    w = PcapNgWriter(str(path))
    for ts, frame in _tcpdump_like():
        if frame[12:14] == b"\x08\x00":
            p = IP(frame[14:])
            p.time = ts
            w.write(p)
    w.close()
    data = load_pcap(path)
    assert data.fmt == "pcapng"
    assert {o.method for o in passive(data.packets)} == {Method.SYN_RCVD, Method.FIN_WAIT1,
                                                         Method.LAST_ACK}  # fmt: skip


def test_dedupe_drops_copies_seen_on_two_interfaces():
    a, b = build_ip(_srv(FIN | ACK, 1, 2)), build_ip(_srv(FIN | ACK, 5, 2))
    pk = [(T0, a), (T0 + 0.00002, a), (T0 + 0.0001, b), (T0 + 0.2, a)]
    assert list(dedupe(pk)) == [pk[0], pk[2], pk[3]]


# --- bad files: one line, no traceback --------------------------------------------------


def _block(btype: int, body: bytes) -> bytes:
    """A pcapng block, padded, with its length before and after."""
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


_SHB = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
_IDB = _block(1, struct.pack("<HHI", 101, 0, 0))


def test_link_type_with_fcs_bits_is_read_as_its_low_16_bits(tmp_path):
    """libpcap's LT_LINKTYPE: the upper bits of the field say whether frames
    carry an FCS; the link type is the low 16 bits (0x14000001: Ethernet)."""
    frame = _ether(build_ip(_srv(SYN | ACK, 1, 2)))
    path = tmp_path / "fcs.pcap"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0x14000001))
        fh.write(struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame)
    data = load_pcap(path)
    assert data.linktypes == (1,) and data.packets == [(1.0, frame[14:])]


def test_truncated_file(scan_pcap, tmp_path):
    path, _, records = scan_pcap
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(PcapError, match=r"cut.pcap: truncated at record \d+") as exc:
        read_pcap(cut)
    assert "\n" not in str(exc.value)
    partial = load_pcap(cut, strict=False)
    assert partial.truncated and partial.packets == records[:-1]


@pytest.mark.parametrize(
    "content, message",
    [
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105), "unsupported link type 105"),
        (b"GET / HTTP/1.0\r\n", "not a pcap or pcapng file"),
        (b"", "empty or truncated"),
        (struct.pack("<I", 0xA1B2C3D4) + b"\0" * 4, "truncated pcap header"),
        (
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
            + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30),
            "corrupt record 1",
        ),  # fmt: skip
        # pcapng blocks whose length fields lie (each once crashed the reader)
        (_SHB + _block(1, b"\x01\0"), "block 2 at byte 28 \\(too short\\)"),
        (_SHB + _IDB + _block(6, b"\0" * 12), "block 3 at byte 48 \\(too short\\)"),
        (
            _SHB + _IDB + _block(6, struct.pack("<IIII", 0, 0, 0, 500) + b"\0" * 4 + b"\x45" * 40),
            "corrupt packet block 3 at byte 48 \\(length 500\\)",
        ),  # fmt: skip
        (
            _SHB + _block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 9, 8) + b"\x09"),
            "interface option 9 \\(length 8\\)",
        ),  # fmt: skip
        (_SHB + _IDB[:-4] + struct.pack("<I", 24), "block 2 at byte 28 \\(trailing length\\)"),
    ],
)
def test_bad_files(tmp_path, content, message):
    p = tmp_path / "bad.pcap"
    p.write_bytes(content)
    with pytest.raises(PcapError, match=message) as exc:
        read_pcap(p)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(str(p))


def test_cli_reports_a_bad_pcap_in_one_line(tmp_path):
    p = tmp_path / "bad.pcap"
    p.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105))
    r = subprocess.run([sys.executable, "-m", "cronos", "plot", str(p), "-o",
                        str(tmp_path / "o.png")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    line = r.stderr.strip()
    assert line.startswith(f"cron-os: {p}: unsupported link type 105 (supported: RAW")
    assert "\n" not in line and "Traceback" not in r.stderr


# --- real stacks ------------------------------------------------------------------------


def _scan_with_pcap(lab, ip, out: Path):
    jout, pout = out / "scan.jsonl", out / "scan.pcap"
    r = cronos("scan", "--netns", lab.scanner_ns, ip, "-p", "80", "-m", "slf", "--timeout", "3",
               "-oJ", str(jout), "-w", str(pout), "-q", "--full",  # tcpdump's copy is compared too
               timeout=120)  # fmt: skip
    assert_ran(r)
    return [json.loads(line) for line in jout.read_text().splitlines()], pout


@pytest.mark.netns
def test_lab_scan_pcap_replays_to_the_same_fingerprints(make_lab, tmp_path):
    lab = make_lab(["linux-orphan2"])
    ip = lab.targets[0].ip
    td_path = tmp_path / "tcpdump.pcap"
    td = subprocess.Popen(["ip", "netns", "exec", lab.scanner_ns, "tcpdump", "-i", "any",
                           "-U", "--time-stamp-precision=nano", "-w", str(td_path), "tcp"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.time() + 10
        while not td_path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        records, pcap = _scan_with_pcap(lab, ip, tmp_path)
        time.sleep(0.3)
    finally:
        td.terminate()
        td.wait(timeout=10)
    records = [r for r in records if "method" in r]  # not the verdict records
    live = {r["method"]: r for r in records}
    assert set(live) == {"s", "l", "f"} and all(r["status"] == "ok" for r in records)

    r = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    assert r.returncode == 0 and "link-type RAW" in r.stderr, r.stderr

    kind, own = analyse_pcap(pcap, timeout_s=3)
    assert kind == "replay" and len(own) == 3
    ours_captured = not any("ours not captured" in o.note for o in own)
    for o in own:
        rec = live[o.method.value]
        assert list(o.fingerprint.gaps_us) == rec["gaps_us"]  # the same kernel timestamps
        assert o.fingerprint.rst_us == rec["rst_us"]
        if ours_captured:  # then everything, Connect and Time included
            assert o.fingerprint.line() == rec["fingerprint"]
            assert list(o.arrivals_us) == rec["arrivals_us"]

    # an independent capture (tcpdump -i any): the same states, gaps within 1 ms
    for mode, obs in (analyse_pcap(td_path, timeout_s=3), ("passive", passive(
            dedupe(read_pcap(td_path))))):  # fmt: skip
        got = {o.method.value: o for o in obs}
        assert set(got) == {"s", "l", "f"}, (mode, obs)
        for m, o in got.items():
            want = live[m]["gaps_us"]
            assert len(o.fingerprint.gaps_us) == len(want), (mode, m)
            for a, b in zip(o.fingerprint.gaps_us, want, strict=True):
                assert abs(a - b) < 1000, (mode, m, o.fingerprint.gaps_us, want)


def test_replay_port_reuse_and_closing_probe_without_handshake():
    recs = _simulate([(Method.SYN_RCVD, 41000, 7)], start=T0).captured
    recs += _simulate([(Method.SYN_RCVD, 41000, 7)], start=T0 + 20).captured  # same 4-tuple
    cfg = ProbeConfig(target=SRV, port=81, src_ip=US, src_port=41001, isn=99, timeout_s=2)
    closed = PROBES[Method.FIN_WAIT1](cfg)
    for seg in closed.start(T0 + 1):
        recs.append((T0 + 1 + 1e-5, build_ip(seg)))
    recs.append((T0 + 1.03, build_ip(_srv(RST | ACK, 0, 100, sport=81, dport=41001))))
    obs = replay_own(sorted(recs, key=lambda r: r[0]), timeout_s=5)
    assert [(o.method, o.try_index, o.status) for o in obs] == [
        (Method.SYN_RCVD, 1, Status.OK),
        (Method.LAST_ACK, 1, Status.CLOSED),
        (Method.SYN_RCVD, 2, Status.OK),
    ]
    assert "LAST_ACK or FIN_WAIT1" in obs[1].note
    assert obs[0].fingerprint == obs[2].fingerprint


@pytest.mark.netns
def test_lab_scan_with_early_stop_replays_to_the_same_fingerprints(make_lab, tmp_path):
    """The default scan stops early; replaying its -w file with the same early
    stop (same database) gives the same fingerprints."""
    from cronos.analysis.db import load_db
    from cronos.analysis.early import EarlyStopper

    jout, pout = tmp_path / "scan.jsonl", tmp_path / "scan.pcap"
    lab = make_lab(["linux-rto20"])
    r = cronos("scan", "--netns", lab.scanner_ns, lab.targets[0].ip, "-p", "80", "-m", "slf",
               "--timeout", "3", "-oJ", str(jout), "-w", str(pout), "-q", timeout=120)  # fmt: skip
    assert_ran(r)
    live = {}
    for line in jout.read_text().splitlines():
        rec = json.loads(line)
        if "method" in rec:
            live[rec["method"]] = rec
    assert any("early stop" in x["note"] for x in live.values())
    kind, own = analyse_pcap(pout, timeout_s=3, stopper=EarlyStopper(load_db()))
    assert kind == "replay" and len(own) == 3
    for o in own:
        assert o.fingerprint.line() == live[o.method.value]["fingerprint"]
