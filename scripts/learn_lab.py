#!/usr/bin/env python3
"""Measure every lab profile with ``cron-os learn`` and write cronos/data/lab.db.

    sudo .venv/bin/python scripts/learn_lab.py [--tries 3] [--timeout 30] [--window 180]

One lab with all profiles is built; one ``cron-os learn`` per target runs
concurrently from the lab's scanner namespace; the blocks are written, in
profile order, to the built-in database. Takes about 4 minutes (libslirp's
12 s FIN retransmissions run until the window ends).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cronos.lab import Lab  # noqa: E402

LINUX = ("Linux | Linux | 6.X | general purpose", "cpe:/o:linux:linux_kernel:6")
LABELS = {
    "linux-default": (
        "Linux 3.1-6.x, default TCP settings [lab linux-default]",
        "Linux | Linux | 3.X-6.X | general purpose",
        "cpe:/o:linux:linux_kernel",
    ),
    "linux-synack2": ("Linux 6.x, tcp_synack_retries=2 [lab linux-synack2]", *LINUX),
    "linux-synack3": (
        "Linux 6.x, tcp_synack_retries=3, tcp_orphan_retries=1 [lab linux-synack3]",
        *LINUX,
    ),
    "linux-orphan2": (
        "Linux 6.x, tcp_synack_retries=1, tcp_orphan_retries=2 [lab linux-orphan2]",
        *LINUX,
    ),
    "linux-rto20": (
        "Linux 6.x, tcp_synack_retries=2, tcp_orphan_retries=2, rto_min 20ms [lab linux-rto20]",
        *LINUX,
    ),
    "lwip": (
        "lwIP 2.1.3 embedded TCP/IP stack (Debian liblwip, default options) [lab lwip]",
        "lwIP | lwIP | 2.X | specialized",
        "cpe:/a:lwip_project:lwip:2.1.3",
    ),
    "gvisor": (
        "gVisor netstack 2022-12-19 (Debian golang-gvisor-gvisor-dev 0.0~20221219) [lab gvisor]",
        "Google | gVisor | 2022.X | specialized",
        "cpe:/a:google:gvisor",
    ),
    "uml": (
        "User-Mode Linux 6.1 (HZ=100), tcp_synack_retries=3, tcp_orphan_retries=1 [lab uml]",
        "Linux | Linux | 6.X | general purpose",
        "cpe:/o:linux:linux_kernel:6.1",
    ),
    "synproxy": (
        "Linux netfilter SYNPROXY in front of Linux 6.x [lab synproxy]",
        "Linux | Linux | 6.X | firewall",
        "cpe:/o:linux:linux_kernel:6",
    ),
    "slirp": (
        "libslirp 4.7 user-mode TCP (slirp4netns, QEMU user networking) [lab slirp]",
        "libslirp | slirp | 4.X | specialized",
        "cpe:/a:libslirp_project:libslirp:4.7",
    ),
    "pytcp": (
        "PyTCP 2.7 pure-Python TCP/IP stack [lab pytcp]",
        "PyTCP | PyTCP | 2.X | specialized",
        "",
    ),
}

HEADER = """\
# Cron-OS reference database: the lab's own stacks, measured on the lab by
# `cron-os learn` through scripts/learn_lab.py (regenerate with it; do not
# edit by hand). Linux kernel 6.18 (HZ=250), veth RTT < 1 ms; each block's
# Source line says how it was measured. Closing-state gaps depend on the RTT
# (Connect=): the matcher rescales Linux-like schedules for the observed RTT.
"""


def _existing_blocks(path: Path) -> dict[str, str]:
    """Blocks of an existing lab.db, keyed by profile ('[lab PROFILE]' in the name)."""
    out: dict[str, str] = {}
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [ln for ln in block.strip().splitlines() if not ln.startswith("#")]
        if lines and lines[0].startswith("Fingerprint ") and "[lab " in lines[0]:
            out[lines[0].rsplit("[lab ", 1)[1].rstrip("]")] = "\n".join(lines) + "\n"
    return out


def ipv6_headers(profiles: list[str], out: Path) -> int:
    """One ``scan -m s`` of each profile's IPv6 address (the first SYN-ACK is
    all it needs), its header written as the block's IPv6 ``CronOS_Hdr`` line."""
    import json
    import tempfile

    from cronos.model import SynAckFeatures

    blocks = _existing_blocks(out)
    with Lab.create(profiles) as lab, tempfile.TemporaryDirectory() as tmp:
        targets = [t for t in lab.targets if t.ip6 and t.profile in blocks]
        rec = Path(tmp) / "h.jsonl"
        subprocess.run([sys.executable, "-m", "cronos", "scan", "--netns", lab.scanner_ns,
                        *(t.ip6 for t in targets), "-p", "80", "-m", "s", "--full",
                        "--timeout", "1", "--window", "2", "-q", "-oJ", str(rec)],
                       check=True)  # fmt: skip
        feats = {}
        for line in rec.read_text().splitlines():
            r = json.loads(line)
            if r.get("features"):
                feats[r["target"]] = SynAckFeatures(**r["features"])
        for t in targets:
            if t.ip6 not in feats:
                print(f"no IPv6 SYN-ACK from {t.profile}", file=sys.stderr)
                return 1
            lines = [ln for ln in blocks[t.profile].splitlines() if "%HL=" not in ln]
            at = next(i for i, ln in enumerate(lines) if ln.startswith("CronOS_Hdr("))
            lines.insert(at + 1, feats[t.ip6].line())
            blocks[t.profile] = "\n".join(lines) + "\n"
            print(f"{t.profile}: {feats[t.ip6].line()}")
    names = [n for n in LABELS if n in blocks]
    out.write_text(HEADER + "\n" + "\n".join(blocks[n] for n in names), encoding="utf-8")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--window", type=float, default=180)
    ap.add_argument("--profile", action="append", help="default: every profile")
    ap.add_argument("--out", default=str(ROOT / "cronos" / "data" / "lab.db"))
    ap.add_argument(
        "--ipv6-headers",
        action="store_true",
        help="keep the blocks of --out; add (or renew) each reachable profile's IPv6 "
        "CronOS_Hdr line, read from one SYN-ACK over IPv6",
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="replace only the given profiles' blocks in --out, keep the others",
    )
    args = ap.parse_args()
    profiles = args.profile or list(LABELS)
    if args.ipv6_headers:
        return ipv6_headers(profiles, Path(args.out))
    blocks: dict[str, str] = {}
    with Lab.create(profiles) as lab:
        procs = {}
        for t in lab.targets:
            label, cls, cpe = LABELS[t.profile]
            port = "80"
            cmd = [sys.executable, "-m", "cronos", "learn", "--netns", lab.scanner_ns, t.ip,
                   "-p", port, "--label", label, "--class", cls, "--tries", str(args.tries),
                   "--timeout", str(args.timeout), "--window", str(args.window),
                   "--source", f"lab profile {t.profile}, cron-os learn, {args.tries} tries "
                   f"per state, timeout {args.timeout:g} s, window {args.window:g} s "
                   "(scripts/learn_lab.py)"]  # fmt: skip
            if cpe:
                cmd += ["--cpe", cpe]
            if t.profile == "pytcp":  # its Python timer thread runs late under load:
                cmd += ["--spread-floor", "0.12"]  # measured 1.15 s idle, 1.39 s busy
            if t.profile == "lwip":  # the phase of its 500 ms tick moves every arrival
                cmd += ["--spread-floor", "0.08"]
            procs[t.profile] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for name, p in procs.items():
            out, _ = p.communicate()
            if p.returncode != 0:
                print(f"learn failed for {name} (exit {p.returncode})", file=sys.stderr)
                return 1
            blocks[name] = out
    if args.replace:
        blocks = {**_existing_blocks(Path(args.out)), **blocks}
        profiles = [n for n in LABELS if n in blocks]
    text = HEADER
    text += "\n" + "\n".join(blocks[n] for n in profiles if n in blocks)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {len(blocks)} signatures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
