"""scan --nmap / -oX end to end against the lab's SYN proxy and a plain Linux target."""

import json
import os
import shutil
import subprocess

import pytest

from helpers import assert_ran, by_profile, cronos

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not shutil.which("nmap"), reason="nmap is not installed"),
]
LAB_PROFILES = ["linux-orphan2", "synproxy"]


def test_synproxy_is_seen_with_nmap_and_xml_validates(lab, tmp_path):
    proxy = by_profile(lab, "synproxy")
    xml = tmp_path / "out.xml"
    jl = tmp_path / "out.jsonl"
    r = cronos(
        "scan", "--netns", lab.scanner_ns, proxy.ip, "-p", "80", "-m", "slf",
         "--timeout", "4", "--nmap", "-oX", str(xml), "-oJ", str(jl)
    )  # fmt: skip
    assert_ran(r)
    out = r.stdout
    assert "nmap's view" in out and "Cron-OS's view" in out
    assert "Aggressive OS guesses" in out or "OS details" in out or "OS guesses" in out
    assert "SYN proxy / relay in front of the server [syn-proxy]" in out
    assert "SYN-ACK TTL 64 but closing-state packets arrive with TTL 63" in out
    verdicts = [json.loads(x) for x in jl.read_text().splitlines() if '"verdict"' in x]
    assert verdicts and verdicts[0]["architecture"]["kind"] == "syn-proxy"
    if shutil.which("xmllint"):
        v = subprocess.run(["xmllint", "--noout", "--dtdvalid", "/usr/share/nmap/nmap.dtd",
                            str(xml)], capture_output=True, text=True)  # fmt: skip
        assert v.returncode == 0, v.stderr
    libnmap = pytest.importorskip("libnmap.parser")
    rep = libnmap.NmapParser.parse_fromfile(str(xml))
    host = rep.hosts[0]
    assert host.address == proxy.ip
    assert [p for p, _ in host.get_open_ports()] == [80]
    assert any(m.name.startswith("nmap: ") for m in host.os.osmatches)  # nmap's own guesses


def test_syn_proxy_said_without_nmap(lab, tmp_path):
    proxy = by_profile(lab, "synproxy")
    r = cronos(
        "scan", "--netns", lab.scanner_ns, proxy.ip, "-p", "80", "-m", "slf",
         "--timeout", "3"
    )  # fmt: skip
    assert_ran(r)
    assert "[syn-proxy]" in r.stdout


def test_nmap_missing_is_one_line_and_cronos_part_completes(lab, tmp_path):
    linux = by_profile(lab, "linux-orphan2")
    env = {**os.environ, "PATH": "/usr/sbin:/sbin"}  # ip, nft, but no nmap (/usr/bin)
    r = cronos(
        "scan", "--netns", lab.scanner_ns, linux.ip, "-p", "80", "-m", "s",
         "--timeout", "2", "--nmap", env=env
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "cron-os: nmap is not installed (apt install nmap)" in r.stderr.splitlines()
    assert "CronOS_Syn(nbPkt=1%" in r.stdout


def test_plain_linux_with_nmap_is_consistent(lab, tmp_path):
    linux = by_profile(lab, "linux-orphan2")
    r = cronos(
        "scan", "--netns", lab.scanner_ns, linux.ip, "-p", "80", "-m", "slf",
         "--timeout", "3", "--nmap"
    )  # fmt: skip
    assert_ran(r)
    assert "nmap's view" in r.stdout
    assert "[consistent]" in r.stdout, r.stdout[-1500:]
