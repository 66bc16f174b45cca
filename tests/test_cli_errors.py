"""Bad input: one clear line on stderr, exit code 2, never a traceback."""

import os
import shutil
import subprocess
import sys

import pytest

CMD = [sys.executable, "-m", "cronos"]


def run(args, **kw):
    return subprocess.run(CMD + args, capture_output=True, text=True, timeout=60, **kw)


BAD = [
    (["scan"], "no target"),
    (["scan", "no-such-host.invalid"], "cannot resolve"),
    (["scan", "127.0.0.1", "-p", "0"], "port 0 out of range"),
    (["scan", "10.0.0.0/33"], "malformed target"),
    (["scan", "224.0.0.1"], "multicast address refused"),
    (["scan", "255.255.255.255"], "broadcast address refused"),
    (["scan", "10.0.0.0/8"], "needs --yes"),
    (["scan", "-iL", "/nonexistent.txt"], "-iL /nonexistent.txt"),
    (["scan", "127.0.0.1", "-p", "70000"], "port 70000 out of range"),
    (["scan", "127.0.0.1", "-p", "http"], "bad port"),
    (["scan", "127.0.0.1", "--timeout", "-1"], "--timeout must be > 0"),
    (["scan", "127.0.0.1", "--tries", "0"], "--tries"),
    (["scan", "127.0.0.1", "-m", "x"], "bad method"),
    (["scan", "fe80::1"], "link-local address needs its zone"),
    (["scan", "127.0.0.1", "--timeout", "abc"], "invalid float value"),
    (["scan", "127.0.0.1", "--netns", "cronos-does-not-exist"], "no such network namespace"),
    (["scan", "127.0.0.1", "-oJ", "/nonexistent-dir/x.jsonl"], "does not exist"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("args,msg", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2(args, msg):
    r = run(args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert msg in lines[0]


@pytest.mark.root
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_not_root_is_one_line():
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CMD, "scan", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "cron-os: cron-os scan needs root (raw sockets, packet capture, nftables)"
    ]


def test_help_lists_commands():
    r = run(["--help"])
    assert r.returncode == 0 and "scan" in r.stdout


_SWALLOWED = """
import sys, weakref
import cronos.cli as cli

class X:
    pass

def startup():  # Ctrl-C lands in a callback Python cannot raise from
    x = X()
    keep = weakref.ref(x, lambda _r: cli._on_sigint(2, None))
    del x
    return real()

real = cli.build_parser
cli.build_parser = startup
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_interrupt_python_could_not_raise_is_not_lost(tmp_path):
    """A SIGINT that arrives inside a callback (importlib's module-lock
    weakref, a __del__) was printed as "Exception ignored in ..." with a
    traceback, and the command ran on to exit 0 (tests/test_kill.py, once)."""
    f = tmp_path / "obs.txt"
    f.write_text("1,5840,52,1,MNNSNW,0,1380,0,0,0,0,0.557733,4.104203,10.349873\n")
    p = subprocess.run([sys.executable, "-c", _SWALLOWED, "classify", str(f)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip() == "cron-os: interrupted"
    assert p.stdout == ""


_SWALLOWED_LATER = """
import gc, sys, weakref
import cronos.cli as cli
import cronos.analysis.classify as c

class X:
    pass

real = c.decide
n = [0]

def decide(*a, **k):  # Ctrl-C lands in a callback while the 3rd target is classified
    n[0] += 1
    if n[0] == 3:
        x = X()
        keep = weakref.ref(x, lambda _r: cli._on_sigint(2, None))
        del x
    return real(*a, **k)

c.decide = decide
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_interrupt_lost_in_a_callback_stops_a_long_run(tmp_path):
    """Lost in a callback in the middle of a run, the interrupt is raised again
    at the next target (``cronos.interrupts.check``): the run stops there,
    with what was classified, instead of running to the end."""
    f = tmp_path / "obs.txt"
    f.write_text("".join(f"{i},5840,52,1,MNNSNW,0,1380,0,0,0,0,0.557733,4.104203\n"
                         for i in range(1, 51)))  # fmt: skip
    p = subprocess.run([sys.executable, "-c", _SWALLOWED_LATER, "classify", "--no-calibrate",
                        str(f)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip() == "cron-os: interrupted"
    assert p.stdout.count("Target ") == 3  # up to the one it came in, not the 50
