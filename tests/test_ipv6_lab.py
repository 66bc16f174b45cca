"""IPv6 on the lab: every Linux profile scanned over IPv4 and IPv6 in one
mixed scan (``-m slf --tries 2``) is named alike over both families, with the
same packet counts and the profile's schedule over each; the IPv6 SYN-ACK
header reads as the same stack's IPv4 one; the capture (``-w``) replays to
the live IPv6 observations; ``-oX`` marks IPv6 hosts ``addrtype="ipv6"``."""

import pytest

from helpers import (
    assert_linux_profile,
    assert_ran,
    cronos,
    names_profile,
    read_records,
    read_verdicts,
)

pytestmark = pytest.mark.netns
LAB_PROFILES = ["linux-orphan2", "linux-rto20", "linux-synack3"]


@pytest.fixture(scope="module")
def scanned(lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("ipv6")
    assert all(t.ip6 for t in lab.targets)
    addrs = [a for t in lab.targets for a in (t.ip, t.ip6)]
    r = cronos("scan", "--netns", lab.scanner_ns, *addrs, "-p", "80", "-m", "slf",
               "--tries", "2", "--timeout", "6", "--full", "--no-progress",
               "-oJ", str(d / "o.jsonl"), "-w", str(d / "o.pcap"),
               "-oX", str(d / "o.xml"))  # fmt: skip
    assert_ran(r)  # a capture loss skips: nothing comparable was measured
    return r, read_records(d / "o.jsonl"), read_verdicts(d / "o.jsonl"), d


def _key(rec):
    return rec["state"], rec["try"]


def test_each_profile_is_named_alike_over_both_families(lab, scanned):
    _, recs, verdicts, _ = scanned
    for t in lab.targets:
        v4, v6 = verdicts[t.ip], verdicts[t.ip6]
        for v in (v4, v6):
            assert names_profile(v["verdict"], t.profile), (t.profile, v["verdict"])
        # the same stack: its lab block, or the Linux law's block reading its
        # settings (IPv6 has no DF bit: one header field less to tell them apart)
        mine4 = {_key(r): r for r in recs if r["target"] == t.ip}
        mine6 = {_key(r): r for r in recs if r["target"] == t.ip6}
        assert set(mine4) == set(mine6) and len(mine6) == 6
        for k, rec in mine6.items():
            assert rec["status"] == "ok", rec
            assert_linux_profile(rec, t.profile)  # the profile's schedule, within its spread
            if rec["state"] == "SYN_RCVD":  # tcp_synack_retries: a count, not a time budget
                assert len(rec["gaps_us"]) == len(mine4[k]["gaps_us"]), (t.profile, k)


def test_the_ipv6_header_is_the_same_stacks_ipv4_header(lab, scanned):
    from cronos.model import SynAckFeatures

    r, recs, _, _ = scanned
    # the port's line: labels that differ between the two tries read "R"
    assert r.stdout.count("%HL=64%FL=R%MSS=1440%") == len(lab.targets), r.stdout
    for t in lab.targets:
        f4 = next(r["features"] for r in recs if r["target"] == t.ip and r["features"])
        f6 = next(r["features"] for r in recs if r["target"] == t.ip6 and r["features"])
        assert f4["flow"] is None and f6["flow"] == "R" and f6["flow_label"]
        labels = {r["features"]["flow_label"] for r in recs if r["target"] == t.ip6
                  and r["features"]}  # fmt: skip
        assert len(labels) == 2  # Linux hashes each flow: a label per try
        assert f6["df"] is False and f6["ip_id"] is None and f6["mss"] == 1440
        same = SynAckFeatures(**f6).v4_equivalent()
        assert (same.window, same.mss, same.options, same.wscale, same.ttl) == (
            f4["window"], f4["mss"], f4["options"], f4["wscale"], f4["ttl"]
        ), (f4, f6)  # fmt: skip


def test_the_capture_replays_to_the_live_ipv6_observations(lab, scanned):
    from cronos.model import Observation
    from cronos.scan.replay import analyse_pcap

    r, recs, _, d = scanned
    kind, replayed = analyse_pcap(d / "o.pcap", timeout_s=6.0, stopper=None)
    assert kind == "replay"
    got = {(o.target, o.method.value, o.try_index): o.fingerprint.line() for o in replayed}
    for rec in recs:
        if ":" in rec["target"]:
            live = Observation.from_dict(rec)
            assert got[(live.target, live.method.value, live.try_index)] == live.fingerprint.line()


def test_xml_names_each_family_and_is_dtd_valid(lab, scanned):
    import shutil
    import subprocess
    from pathlib import Path

    _, _, _, d = scanned
    xml = (d / "o.xml").read_text()
    dtd, xmllint = Path("/usr/share/nmap/nmap.dtd"), shutil.which("xmllint")
    if xmllint and dtd.exists():
        out = subprocess.run([xmllint, "--noout", "--dtdvalid", str(dtd), str(d / "o.xml")],
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
    for t in lab.targets:
        assert f'<address addr="{t.ip6}" addrtype="ipv6" />' in xml
        assert f'<address addr="{t.ip}" addrtype="ipv4" />' in xml
