"""Bad input, command by command: exit 2, one line on stderr naming the problem,
no traceback, and no firewall table or lab left behind.

Every case fails before a packet is sent. Run as root, each case also checks
that the root namespace (where it ran) has no new ``cronos_`` nft table and
that no lab state file names the failed process as its owner. ``scan --nmap``
without nmap (exit 1, one line, the scan still runs) needs a lab target: it is
covered by tests/test_nmap_scan.py::test_missing_nmap_*.
"""

import glob
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

CMD = [sys.executable, "-m", "cronos"]
ROOT = os.geteuid() == 0
PCAP = Path(__file__).parent / "data" / "syn_linux_synack2.pcap"

_DB_HEAD = "Class a | b | c | d\nSource test\n"


def _files(d: Path) -> None:
    """The bad files the table below refers to as {d}/NAME."""
    (d / "syntax.db").write_text(f"Fingerprint X\n{_DB_HEAD}CronOS_Syn(nbPkt=1%Time=6%p=abc)\n")
    block = "Fingerprint Dup\n" + _DB_HEAD + "CronOS_Syn(nbPkt=1%Time=6%p={})\n"
    (d / "dup.db").write_text(block.format(1000) + "\n" + block.format(2000))
    (d / "empty.db").write_text("")
    (d / "binary.db").write_bytes(bytes(range(256)) * 2)
    (d / "long.db").write_text("# " + "x" * 5000 + "\n")
    raw = PCAP.read_bytes()
    (d / "header.pcap").write_bytes(raw[:12])  # cut inside the file header
    linktype_147 = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)
    (d / "link.pcap").write_bytes(linktype_147 + raw[24:])
    corrupt = struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0x7FFFFFFF)  # record length 2 GB
    (d / "corrupt.pcap").write_bytes(raw[:24] + corrupt + b"x" * 64)
    (d / "text.pcap").write_text("hello, not a capture\n" * 3)
    (d / "binary.txt").write_bytes(b"\x00\x01garbage\x00")
    (d / "entry.txt").write_text("10.77.0.1\n10.77.0.2 10.77.0.3\n")
    (d / "exclude.txt").write_text("10.0.0.0/33\n")
    (d / "obs.jsonl").write_text('{"target": "10.0.0.1", "port": 80\n')
    (d / "good.txt").write_text("CronOS_Syn(nbPkt=2%Time=30%p=2806316%p=6010910)\n")
    (d / "bad.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 10)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2]}), d / "other.parquet")


S = ["scan", "192.0.2.1"]  # TEST-NET-1: never probed, every case fails before
L = ["learn", "192.0.2.1", "--label", "x", "--class", "a | b | c | d"]
C = ["classify", "{d}/good.txt"]
P = ["plot", "{d}/good.txt", "-o", "{d}/x.png"]
BAD = [
    # targets
    (["scan", "no-such-host.invalid"], "cannot resolve 'no-such-host.invalid'"),
    (["scan", "10.0.0.0/33"], "malformed target '10.0.0.0/33'"),
    (["scan", "10.0.0.300"], "cannot resolve '10.0.0.300'"),
    (["scan", "fd00::/64"], "never enumerates an IPv6 prefix larger than a /104"),
    (["scan", "fd00::/64", "--yes"], "never enumerates an IPv6 prefix larger than a /104"),
    (["scan", "fd00::/110"], "262144 hosts to scan: more than 4096 needs --yes"),
    (["scan", "fd00::zz"], "malformed IPv6 address 'fd00::zz'"),
    (["scan", "fd00::1/129"], "malformed target 'fd00::1/129'"),
    (["scan", "fe80::1"], "a link-local address needs its zone"),
    (["scan", "fe80::1%cronos-no-if"], "no interface 'cronos-no-if'"),
    (["scan", "2001:db8::1%lo"], "a zone (%lo) is only for a link-local"),
    (["scan", "fd00::1/120%lo"], "a zone goes on one address, not on a prefix"),
    (["scan", "fe80::1-fe80::9%lo"], "a zone goes on one address, not on a range"),
    (["scan", "10.0.0.1-fd00::2"], "mixes IPv4 and IPv6"),
    (["scan", "10.0.0.9-10.0.0.1"], "the last address is before the first"),
    (["scan", "ff02::1"], "multicast address refused (use --allow-special)"),
    (["scan", "::"], "unspecified address refused"),
    (["scan", "::ffff:10.0.0.1"], "an IPv4-mapped address; give the IPv4 address 10.0.0.1"),
    (["scan", "-4", "fd00::1"], "an IPv6 address, but -4 was given"),
    (["scan", "-6", "192.0.2.1"], "an IPv4 address, but -6 was given"),
    (["scan", "-6", "192.0.2.0/24"], "an IPv4 target, but -6 was given"),
    (["scan", "-4", "-6", "192.0.2.1"], "not allowed with argument"),
    (["scan", "-p", "80"], "no target given"),
    (["scan", ""], "empty target"),
    (["scan", "224.0.0.1"], "multicast address refused (use --allow-special)"),
    (["scan", "255.255.255.255"], "broadcast address refused (use --allow-special)"),
    (["scan", "0.0.0.0"], "'this network' address refused"),
    (["scan", "240.0.0.1"], "reserved address refused"),
    (["scan", "10.0.0.0/8"], "16777216 hosts to scan: more than 4096 needs --yes"),
    # ports
    ([*S, "-p", "0"], "port 0 out of range 1-65535"),
    ([*S, "-p", "70000"], "port 70000 out of range 1-65535"),
    ([*S, "-p", "80-"], "bad port '80-'"),
    ([*S, "-p", "a"], "bad port 'a'"),
    ([*S, "-p", ""], "empty port list"),
    ([*S, "-p", "90-80"], "bad port range '90-80'"),
    # options
    ([*S, "--timeout", "-1"], "--timeout must be > 0 seconds"),
    ([*S, "--timeout", "abc"], "argument --timeout: invalid float value: 'abc'"),
    ([*S, "--tries", "0"], "--tries must be between 1 and 100 (got 0)"),
    ([*S, "--tries", "1000"], "--tries must be between 1 and 100 (got 1000)"),
    ([*S, "-m", "x"], "bad method 'x'"),
    ([*S, "--max-rate", "0"], "--max-rate must be > 0"),
    ([*S, "--max-hosts", "0"], "--max-hosts must be >= 1"),
    ([*S, "--window", "0"], "--window must be > 0 seconds"),
    ([*S, "--payload", ""], "--payload must be 1 to 1400 bytes"),
    ([*S, "--top", "0"], "--top must be between 1 and 100"),
    ([*S, "--resume", "{d}/a.jsonl", "-oJ", "{d}/b.jsonl"], "--resume FILE already appends"),
    ([*S, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ([*S, "--cluster", "tcp://127.0.0.1:1"], "--cluster tcp://127.0.0.1:1: no Dask scheduler"),
    ([*S, "--cluster", "tcp://127.0.0.1:1", "-oX", "{d}/x.xml"], "-oX is not available with"),
    ([*S, "--shards", "0", "--cluster", "x:1"], "--shards must be between 1 and 65536"),
    ([*S, "--shards", "4"], "--shards needs --cluster"),
    (["classify", "{d}/good.txt", "--cluster", "tcp://127.0.0.1:1"], "no Dask scheduler answers"),
    (["worker", "nonsense"], "'nonsense': expected the scheduler as tcp://HOST:PORT"),
    (["worker", "tcp://127.0.0.1:1"], "scheduler tcp://127.0.0.1:1: no Dask scheduler answers"),
    (
        ["worker", "tcp://127.0.0.1:1", "--netns", "cronos-does-not-exist"],
        "no such network namespace: cronos-does-not-exist",
    ),
    ([*S, "--shard", "2/2", "--seed", "1"], "--shard 2/2: expected I/N with 0 <= I < N"),
    ([*S, "--shard", "1of2", "--seed", "1"], "--shard '1of2': expected I/N, as 0/4"),
    ([*S, "--shard", "0/2"], "--shard needs --seed S, the same S on every shard"),
    ([*S, "--seed", "x1"], "--seed 'x1': expected an integer"),
    ([*S, "--seed", "-1"], "--seed -1: expected an integer from 0 to 2^64-1"),
    # database files
    ([*S, "--db", "{d}/syntax.db"], "{d}/syntax.db:4: CronOS_Syn: p='abc' is not an integer"),
    ([*S, "--db", "{d}/dup.db"], "{d}/dup.db:6: duplicate name 'Dup', already at {d}/dup.db:1"),
    (["classify", "/dev/null", "--db", "{d}/syntax.db"], "{d}/syntax.db:4: "),
    (["classify", "/dev/null", "--db", "{d}/dup.db"], "{d}/dup.db:6: duplicate name 'Dup'"),
    (["classify", "/dev/null", "--db", "{d}/empty.db"], "{d}/empty.db:1: empty file"),
    # db
    (["db", "list", "--class", "no such os"], "no block's Class contains 'no such os'"),
    (["db", "list", "--db", "{d}/syntax.db"], "{d}/syntax.db:4: "),
    (["db", "show", "Plan 9 from Bell Labs"], "no block named like 'Plan 9 from Bell Labs'"),
    (["db", "show", "x", "--db", "{d}/dup.db"], "{d}/dup.db:6: duplicate name 'Dup'"),
    (["db", "check", "{d}/empty.db"], "{d}/empty.db:1: empty file"),
    (["db", "check", "{d}/none.db"], "{d}/none.db:0: cannot read"),
    (["classify", "/dev/null", "--db", "{d}/binary.db"], "{d}/binary.db:1: "),
    (["classify", "/dev/null", "--db", "{d}/long.db"], "{d}/long.db:1: line longer than 4096"),
    (["classify", "/dev/null", "--db", "{d}/none.db"], "{d}/none.db:0: cannot read"),
    # packet captures
    (["classify", "--pcap", "{d}/header.pcap"], "{d}/header.pcap: truncated pcap header"),
    (["classify", "--pcap", "{d}/link.pcap"], "{d}/link.pcap: unsupported link type 147"),
    (["classify", "--pcap", "{d}/corrupt.pcap"], "{d}/corrupt.pcap: corrupt record 1"),
    (["classify", "--pcap", "{d}/text.pcap"], "{d}/text.pcap: not a pcap or pcapng file"),
    (["classify", "--pcap", "{d}/none.pcap"], "{d}/none.pcap: cannot read"),
    # -iL, --exclude-file, classify input
    (["scan", "-iL", "{d}/none.txt"], "-iL {d}/none.txt: No such file or directory"),
    (["scan", "-iL", "{d}/binary.txt"], "-iL {d}/binary.txt: binary file"),
    (["scan", "-iL", "{d}/entry.txt"], "-iL {d}/entry.txt:2: bad entry '10.77.0.2 10.77.0.3'"),
    ([*S, "--exclude-file", "{d}/exclude.txt"], "malformed --exclude-file entry '10.0.0.0/33'"),
    ([*S, "--exclude-file", "{d}/none.txt"], "--exclude-file {d}/none.txt: No such file"),
    (["classify", "{d}/obs.jsonl"], "{d}/obs.jsonl:1: not JSON"),
    (["classify", "{d}/binary.txt"], "{d}/binary.txt:1: binary file"),
    (["classify", "{d}/none.jsonl"], "{d}/none.jsonl: cannot read"),
    # namespaces, labs, learn
    ([*S, "--netns", "cronos-does-not-exist"], "no such network namespace: cronos-does-not-exist"),
    ([*S, "--netns", "../etc"], "bad network namespace name '../etc'"),
    (["lab", "up", "-P", "nosuch"], "unknown lab profile 'nosuch'"),
    (["lab", "down"], "lab down: give a lab ID or --all"),
    (["lab", "down", "zzz"], "bad lab id 'zzz'"),
    (["learn", "192.0.2.1", "--class", "a | b | c | d"], "required: --label"),
    (["learn", "192.0.2.1", "--label", "x", "--class", "a|b|c|d|e"], "bad --class"),
    (["learn", "192.0.2.1", "--label", "x", "--class", "a", "-p", "80,81"], "one port"),
    ([*S, "-e", "crnosuch0"], "-e crnosuch0: no such interface"),
    ([*L, "-m", "q"], "bad method 'q'"),
    ([*L, "--cpe", "foo"], "--cpe 'foo': must start with cpe:/ or cpe:2.3:"),
    ([*L, "--source", "a # b"], "--source must be a single line without '#'"),
    ([*L, "--tries", "0"], "--tries must be between 1 and 50"),
    ([*L, "--spread-floor", "1"], "--spread-floor must be in [0, 1)"),
    ([*L, "--timeout", "0"], "--timeout and --window must be > 0"),
    ([*L, "--window", "-5"], "--timeout and --window must be > 0"),
    ([*L, "--db-out", "{d}/missing/x.db"], "--db-out {d}/missing/x.db: not a file in an exist"),
    ([*L, "--db-out", "{d}/syntax.db"], "--db-out: {d}/syntax.db:4: CronOS_Syn: p='abc'"),
    ([*L, "--netns", "cronos-does-not-exist"], "no such network namespace"),
    ([*L, "-e", "crnosuch0"], "-e crnosuch0: no such interface"),
    (
        ["learn", "192.0.2.1", "--label", "x", "--class", "Linux"],
        "bad --class 'Linux': Class needs",
    ),
    (["demo", "-P", "nosuch"], "unknown lab profile 'nosuch'"),
    (["demo", "-m", "x"], "bad method 'x'"),
    (["demo", "--timeout", "0"], "--timeout must be > 0 seconds"),
    (["demo", "--tries", "0"], "--tries must be between 1 and 100"),
    (["lab", "up", "--delay", "fast"], "bad delay 'fast'"),
    (["lab", "up", "--jitter", "ten"], "bad jitter 'ten'"),
    (["lab", "up", "--loss", "200%"], "impairment loss_pct 200.0 is over 100"),
    (["lab", "up", "--jitter-dist", "pareto"], "--jitter-dist goes with --jitter"),
    (["lab", "up", "--jitter", "5ms", "--jitter-dist", "cauchy"], "invalid choice: 'cauchy'"),
    ([*C, "--top", "0"], "--top must be at least 1"),
    ([*C, "--unknown-prior", "0"], "--unknown-prior must be between 0 and 1"),
    (["classify", "--pcap", "{d}/none.pcap", "--timeout", "0"], "--timeout must be > 0 seconds"),
    (["classify", "--pcap", "{d}/none.pcap", "--window", "-1"], "--window must be > 0 seconds"),
    ([*C, "-oJ", "{d}/missing/v.jsonl"], "-oJ {d}/missing/v.jsonl: directory does not exist"),
    ([*C, "-oP", "{d}/missing/v.parquet"], "-oP {d}/missing/v.parquet: directory does not exist"),
    (["classify", "{d}/bad.parquet"], "{d}/bad.parquet: not a readable Parquet file"),
    (["classify", "{d}/other.parquet"], "{d}/other.parquet: not a Cron-OS Parquet file"),
    ([*C, "-oH", "{d}/missing/x.html"], "-oH {d}/missing/x.html: directory"),
    ([*C, "-oX", "{d}/missing/x.xml"], "-oX {d}/missing/x.xml: directory does not exist"),
    ([*P, "--db", "{d}/dup.db"], "{d}/dup.db:6: duplicate name 'Dup'"),
    ([*P, "--top", "-1"], "--top must be >= 0"),
    ([*P, "-oH", "{d}/missing/x.html"], "-oH {d}/missing/x.html: directory does not exist"),
    ([*P, "--timeout", "0"], "--timeout must be > 0 seconds"),
    ([*P, "--window", "0"], "--window must be > 0 seconds"),
    (["plot", "{d}/good.txt", "-o", "{d}/missing/x.png"], "-o {d}/missing/x.png: directory"),
    # outputs
    ([*S, "-oJ", "{d}/missing/x.jsonl"], "-oJ {d}/missing/x.jsonl: directory"),
    ([*S, "-oP", "{d}/missing/x.parquet"], "-oP {d}/missing/x.parquet: directory"),
    ([*S, "-oX", "{d}/missing/x.xml"], "-oX {d}/missing/x.xml: directory does not exist"),
    ([*S, "-oH", "{d}/missing/x.html"], "-oH {d}/missing/x.html: directory"),
    ([*S, "--plot", "{d}/missing/x.png"], "--plot {d}/missing/x.png: directory"),
    ([*S, "-w", "{d}/missing/x.pcap"], "-w {d}/missing/x.pcap: directory does not exist"),
    ([*S, "--plot", "{d}/x.gif"], "--plot {d}/x.gif: format must be one of .png, .svg, .pdf"),
    (["classify", "/dev/null", "--plot", "{d}/x.gif"], "format must be one of .png, .svg"),
    (["plot", "{d}/obs.jsonl", "-o", "{d}/x.gif"], "plot format must be one of .png"),
    # commands
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    _files(d)
    return d


def _tables(pid: int) -> set[str]:
    """The nft tables process ``pid`` made (``cronos_<pid>_...``): a live test
    running beside this one (``make test``) may hold tables of its own."""
    if not ROOT or not shutil.which("nft"):
        return set()
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {ln.split()[-1] for ln in out.splitlines() if f"cronos_{pid}_" in ln}


def _labs_owned_by(pid: int) -> list[str]:
    owned = []
    for f in glob.glob("/run/cronos/labs/*.json"):
        try:
            if json.loads(Path(f).read_text())["owner"]["pid"] == pid:
                owned.append(f)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a lab being written or removed by someone else
    return owned


def _run(args, **kw):
    """``cron-os ARGS`` (or ARGS when it starts with another program: setpriv
    execs cron-os in its own process, so the pid is cron-os's)."""
    argv = args if args and args[0] == "setpriv" else CMD + args
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    out, err = p.communicate(timeout=60)
    return p, out, err


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


#: Options for which no value is bad input, and why.
NO_BAD_VALUE = {
    ("classify", "input"): "a missing input is a 'cannot read' case, listed under classify",
    ("worker", "--name"): "any text names a worker",
}


def _options(parser, path=()):
    """(subcommand path, option strings) of every option that takes a value."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subs:
        for name, sub in subs[0].choices.items():
            yield from _options(sub, (*path, name))
        return
    for a in parser._actions:
        if a.nargs != 0 and not isinstance(a, argparse._HelpAction):
            yield path, tuple(a.option_strings) or (a.dest,)


def test_every_option_that_takes_a_value_has_a_bad_input_case():
    """The table covers the command line: each option with a value (and each
    positional) of each subcommand appears in at least one case, unless
    NO_BAD_VALUE says why none exists. A new option without a case fails here."""
    from cronos.cli import build_parser

    missing = []
    for path, names in _options(build_parser()):
        cases = [a for a, _ in BAD if tuple(a[: len(path)]) == path]
        positional = not names[0].startswith("-")
        covered = cases if positional else [a for a in cases if set(names) & set(a)]
        if not covered and (path[0], names[0]) not in NO_BAD_VALUE and path != ("lab", "status"):
            missing.append(f"{' '.join(path)} {'/'.join(names)}")
    assert missing == [], f"options with no bad-input case: {missing}"


@pytest.mark.parametrize("args,msg", BAD, ids=[" ".join(a) or "''" for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_left(args, msg, bad_dir):
    args = [a.format(d=bad_dir) for a in args]
    p, _out, err = _run(args)
    assert p.returncode == 2, err
    line = _one_line(err)
    assert line.startswith("cron-os: "), line
    assert msg.format(d=bad_dir) in line
    assert _tables(p.pid) == set(), "a firewall table was left"
    assert _labs_owned_by(p.pid) == []


def test_truncated_last_record_is_read_not_refused(bad_dir):
    """A capture cut inside its last record (a killed tcpdump) is read up to
    that record, by design (pcapio ``strict=False``): not bad input."""
    cut = bad_dir / "cut.pcap"
    cut.write_bytes(PCAP.read_bytes()[:-7])
    p, out, err = _run(["classify", "--pcap", str(cut)])
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert "1 observation(s)" in err and "Verdict:" in out


NOT_ROOT = [
    (["scan", "192.0.2.1"], "cron-os: cron-os scan needs root (raw sockets, packet capture"),
    (["learn", "192.0.2.1", "--label", "x", "--class", "a | b | c | d"],
     "cron-os: cron-os learn needs root"),
    (["lab", "up", "-P", "linux-default"], "cron-os: the lab needs root"),
    (["lab", "down", "--all"], "cron-os: the lab needs root"),
    (["cleanup"], "cron-os: cron-os cleanup needs root"),
    (["demo"], "cron-os: cron-os demo needs root"),
    (["worker", "tcp://127.0.0.1:1"], "cron-os: cron-os worker needs root"),
]  # fmt: skip


@pytest.mark.root
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("args,msg", NOT_ROOT, ids=[" ".join(a) for a, _ in NOT_ROOT])
def test_not_root_is_one_line(args, msg):
    p, _out, err = _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CMD,
                         *args], env={**os.environ, "HOME": "/tmp"})  # fmt: skip
    assert p.returncode == 2, err
    assert _one_line(err).startswith(msg)
    assert _tables(p.pid) == set()


# Partial records of a SIGINT'ed scan (the kill test's trial scan-11) made the
# matcher's class verdict take max() of nothing: "internal error", exit 3.
INTERRUPTED = [
    '{"target":"x","port":80,"method":"l","state":"LAST_ACK","try":1,"status":"aborted","time_s":1,"nb_pkt":2,"gaps_us":[206206,420086],"connect_us":1479,"rst_us":null,"listened_us":1164006,"arrivals_us":[1898,208104,628190],"fingerprint":"CronOS_LastAck(nbPkt=2%Time=1%Connect=1479%p=206206%p=420086)","features":null}',
    '{"target":"x","port":80,"method":"s","state":"SYN_RCVD","try":1,"status":"aborted","time_s":1,"nb_pkt":0,"gaps_us":[],"connect_us":null,"rst_us":null,"listened_us":813049,"arrivals_us":[3],"fingerprint":"CronOS_Syn(nbPkt=0%Time=1)","features":{"window":65160,"ttl":64,"df":true,"ip_id":0,"mss":1460,"options":"MSTNW","wscale":10}}',
    '{"target":"x","port":80,"method":"s","state":"SYN_RCVD","try":1,"status":"aborted","time_s":3,"nb_pkt":1,"gaps_us":[1024659],"connect_us":null,"rst_us":null,"listened_us":8036619,"arrivals_us":[5,1024663],"fingerprint":"CronOS_Syn(nbPkt=1%Time=3%p=1024659)","features":{"window":65160,"ttl":64,"df":true,"ip_id":0,"mss":1460,"options":"MSTNW","wscale":10}}',
    '{"target":"x","port":80,"method":"f","state":"FIN_WAIT1","try":1,"status":"ok","time_s":0,"nb_pkt":3,"gaps_us":[34428,55981,100013],"connect_us":3043,"rst_us":null,"listened_us":190423,"arrivals_us":[3774,38201,94183,194196],"fingerprint":"CronOS_FinWait(nbPkt=3%Time=0%Connect=3043%p=34428%p=55981%p=100013)","features":null}',
]  # fmt: skip


def test_interrupted_records_classify_without_internal_error(tmp_path):
    f = tmp_path / "interrupted.jsonl"
    f.write_text("\n".join(INTERRUPTED) + "\n")
    p, out, err = _run(["classify", str(f)])
    assert p.returncode == 0, err
    assert "internal error" not in err and "Traceback" not in err
    assert out.startswith("Target x (4 observations")
