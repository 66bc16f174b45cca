"""A /22 of lab addresses scanned from a real terminal (a pty): the progress
line is drawn, JSON Lines stream while the scan runs, and a Ctrl-C typed on
the terminal (the tty driver's SIGINT to the whole foreground process group,
classification workers included) keeps every finished host's records."""

import fcntl
import json
import os
import pty
import re
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from cronos.lab.scale import ScaleLab

from helpers import default_signals

REPO = Path(__file__).resolve().parents[1]


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(x) for x in lines]


class _Terminal:
    """The master side of a pty, drained in a thread (a full pty blocks the writer)."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, b"\x00\x28\x00\xc8\x00\x00\x00\x00")
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self):
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every slave fd is closed
                return
            if not chunk:
                return
            with self.lock:
                self.buf += chunk

    def text(self) -> str:
        with self.lock:
            return self.buf.decode(errors="replace")


@pytest.mark.netns
def test_slash22_from_a_terminal_progress_stream_and_ctrl_c(tmp_path):
    # one target namespace; its lo answers for the whole 10.100.0.0/16 (AnyIP)
    with ScaleLab.create(1, ["linux-synack2"]) as lab:
        net = lab.hosts[0].rsplit(".", 2)[0] + ".0.0/22"
        out = tmp_path / "out.jsonl"
        term = _Terminal()

        def controlling_tty():  # what a shell does for a foreground job
            default_signals()
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        cmd = [sys.executable, "-m", "cronos", "scan", "--netns", lab.scanner_ns, net,
               "-p", "80", "-m", "s", "--timeout", "3", "--max-rate", "2000",
               "--max-hosts", "256", "-q", "-oJ", str(out)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdin=term.slave, stdout=term.slave, stderr=term.slave,
                                preexec_fn=controlling_tty, cwd=REPO)  # fmt: skip
        os.close(term.slave)
        term.thread.start()
        try:
            # the first wave of 256 hosts is over (about 5 s), later ones run
            deadline = time.monotonic() + 60
            before: list[dict] = []
            while time.monotonic() < deadline and proc.poll() is None:
                before = _records(out)
                if sum(r.get("type") == "verdict" for r in before) >= 300:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, term.text()[-2000:]
            finished = {r["target"] for r in before if r.get("type") == "verdict"}
            assert 300 <= len(finished) < 1022
            shown = term.text()
            os.write(term.master, b"\x03")  # Ctrl-C, typed
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        term.thread.join(timeout=10)
        os.close(term.master)
        screen = term.text()

        assert rc == 130, screen[-2000:]
        assert "Traceback" not in screen, screen[-3000:]
        # the live line (tqdm): redrawn in place, a bar of measurements, hosts done /
        # total, listening, packets, drops
        assert re.search(r"\r *\d+%\|[^\r]*\| *\d+/1022 ", shown), shown[-500:]
        assert "/1022 done, " in shown and " listening, pkts in " in shown, shown[-500:]
        assert "drops 0" in shown
        # streamed: records were on disk while the scan ran (read above)
        recs = _records(out)  # every line is whole JSON
        meas = [r for r in recs if "arrivals_us" in r]
        verdicts = {r["target"] for r in recs if r.get("type") == "verdict"}
        targets = [r["target"] for r in meas]
        assert len(targets) == len(set(targets))  # one measurement each, none twice
        assert finished <= verdicts  # every host finished before Ctrl-C is still there
        by_target = {r["target"]: r for r in meas}
        for t in finished:
            assert by_target[t]["status"] == "ok" and by_target[t]["nb_pkt"] == 2
        # the hosts listening at Ctrl-C: recorded as interrupted, not dropped
        interrupted = [r for r in meas if r["note"] == "interrupted"]
        assert interrupted, "Ctrl-C came while hosts were listening"
        # aborted: timed until Ctrl-C; filtered: no SYN-ACK yet
        assert all(r["status"] in ("aborted", "filtered") for r in interrupted)
        assert any(r["status"] == "aborted" for r in interrupted)
        assert set(targets) == verdicts  # every measured host has its verdict record
        assert len(meas) < 1022  # the scan did stop
        # nothing left behind in the scanner's namespace
        tables = subprocess.run(["ip", "netns", "exec", lab.scanner_ns, "nft", "list", "tables"],
                                capture_output=True, text=True).stdout  # fmt: skip
        assert "cronos_" not in tables
        left = subprocess.run(["pgrep", "-f", "cronos scan --netns " + lab.scanner_ns],
                              capture_output=True, text=True).stdout  # fmt: skip
        assert left == ""
