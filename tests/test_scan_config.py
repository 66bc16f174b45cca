"""The scan's typed configuration: every bad value is a one-line UsageError
naming its option, before anything touches the network or the disk."""

import pytest

from cronos.errors import UsageError
from cronos.model import Method
from cronos.scan.config import DEFAULT_PAYLOAD, ScanConfig, ScanOutputs, parse_payload


def test_defaults_are_the_commands():
    cfg = ScanConfig(targets=("192.0.2.1",))
    assert cfg.ports == (80,) and cfg.methods == (Method.SYN_RCVD,) and cfg.early_stop
    assert cfg.payload == DEFAULT_PAYLOAD and cfg.per_target == 1
    many = ScanConfig(targets=("x",), ports=(80, 443), methods=tuple(Method), tries=2)
    assert many.per_target == 12


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(targets=()), "no target given"),
        (dict(timeout_s=0), "--timeout must be > 0"),
        (dict(window_s=-1), "--window must be > 0"),
        (dict(tries=101), "--tries must be between 1 and 100"),
        (dict(max_rate_pps=0), "--max-rate must be > 0"),
        (dict(max_in_flight=0), "--max-hosts must be >= 1"),
        (dict(payload=b""), "--payload must be 1 to 1400 bytes"),
        (dict(payload=b"x" * 1401), "--payload must be 1 to 1400 bytes"),
    ],
)
def test_bad_values(kw, message):
    with pytest.raises(UsageError, match=message) as exc:
        ScanConfig(**{"targets": ("192.0.2.1",), **kw})
    assert "\n" not in str(exc.value)


def test_bad_outputs(tmp_path):
    with pytest.raises(UsageError, match="--top must be between 1 and 100"):
        ScanOutputs(top=0)
    with pytest.raises(UsageError, match="--resume FILE already appends"):
        ScanOutputs(json_out="a.jsonl", resume="b.jsonl")
    with pytest.raises(UsageError, match="-w .*directory does not exist"):
        ScanOutputs(pcap_out=str(tmp_path / "no" / "x.pcap"))
    o = ScanOutputs(resume=str(tmp_path / "r.jsonl"), html_out=str(tmp_path / "r.html"))
    assert o.records == str(tmp_path / "r.jsonl") and o.evidence


def test_payload_escapes():
    assert parse_payload(None) == DEFAULT_PAYLOAD
    assert parse_payload(r"HEAD / HTTP/1.0\r\n\r\n") == b"HEAD / HTTP/1.0\r\n\r\n"


@pytest.mark.root
def test_scan_raises_the_open_file_limit_its_max_hosts_needs():
    """50,000 measurements listening need 50,000 sockets: as root the scan
    raises its soft and hard open-file limits (within fs.nr_open) instead of
    lowering --max-hosts to a hard limit a shell happened to set; without
    CAP_SYS_RESOURCE, up to the hard limit."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import resource\n"
        "from cronos.cli.scan_cmd import _raise_fd_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))\n"
        "_raise_fd_limit(50_512)\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    caps = next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith("CapEff:"))  # fmt: skip
    if int(caps.split()[1], 16) >> 24 & 1:  # CAP_SYS_RESOURCE: may raise the hard limit
        want = min(50_512, int(Path("/proc/sys/fs/nr_open").read_text()))
        assert out.stdout.split() == [str(want), str(want)]
    else:  # a container without it (this project's CI): the hard limit is what it gets
        assert out.stdout.split() == ["4096", "4096"]
