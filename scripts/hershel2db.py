#!/usr/bin/env python3
"""Convert the Hershel / Hershel+ data (../shared/data/hershel) into Cron-OS blocks.

    .venv/bin/python scripts/hershel2db.py [--data DIR] [--out cronos/data/hershel.db]

Each stack (50 samples) becomes one SYN_RCVD signature: the header features of
the first SYN-ACK (the most common variant), the representative schedule (the
per-position MEDIAN of the arrival times after the first SYN-ACK, turned into
gaps in microseconds) and its spread (1.4826 x MAD per position). Where
``rst_present=1`` the last time of each series is taken as the final RST (see
``docs/database.md``, "Hershel data"). Stacks identical in every feature are
merged into one block naming every label. ``bench/accuracy.py`` reuses
``stack_signature`` to build a database from part of the samples.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cronos.analysis.db import UNKNOWN_CLASS, OsClass, Signature  # noqa: E402
from cronos.model import Method, StateFingerprint, SynAckFeatures  # noqa: E402

MIN_SPREAD_US = 1000
#: a shift this many spreads (and SLIP_MIN_US) away is a slip of the timer,
#: when SLIP_MIN_SAMPLES samples or more show one
SLIP_Z = 4.0
SLIP_MIN_US = 5_000
SLIP_MIN_SAMPLES = 2
FILES = {  # data file -> (mapping file, tag, first time is the first SYN-ACK at 0.0)
    "HershelDB_116OS.txt": ("class-to-os-mapping_116OS.txt", "Hershel", True),
    "420OS_db.txt": ("420OS_mapping.txt", "Hershel+", False),
}


@dataclass(frozen=True)
class Sample:
    """One published line: header fields and retransmission times (s)."""

    window: int
    ttl: int
    df: bool
    options: str
    mss: int | None
    rst: bool
    times_s: tuple[float, ...]  # after the first SYN-ACK; with the RST last if rst

    @property
    def header(self) -> tuple:
        return (self.window, self.ttl, self.df, self.options, self.mss, self.rst)


def read_samples(path: Path, first_zero: bool) -> dict[int, list[Sample]]:
    """{stack id: samples} from one Hershel data file."""
    out: dict[int, list[Sample]] = defaultdict(list)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        f = [x.strip() for x in line.split(",")]
        if len(f) < 12 or not f[0].isdigit():
            continue
        times = [float(x) for x in f[12:] if x]
        if first_zero:  # the 116 file lists the first SYN-ACK itself as 0.0
            if not times or times[0] != 0.0:
                raise ValueError(f"{path}:{n}: expected 0.0 as first time")
            times = times[1:]
        opts = "" if f[4] == "X" else f[4]  # X: no TCP option at all
        out[int(f[0])].append(
            Sample(
                window=int(f[1]),
                ttl=int(f[2]),
                df=f[3] == "1",
                options=opts,
                mss=int(f[6]) if "M" in opts and f[6] not in ("", "0") else None,
                rst=f[7] == "1",
                times_s=tuple(times),
            )
        )
    return dict(out)


def read_labels(path: Path) -> dict[int, str]:
    labels = {}
    for line in path.read_text(errors="replace").splitlines():
        sid, sep, label = line.partition(",")
        if sep and sid.strip().isdigit():
            labels[int(sid)] = label.strip() or f"stack{sid.strip()}"
    return labels


def stack_signature(
    samples: list[Sample], name: str, source: str, klass: OsClass = UNKNOWN_CLASS
) -> Signature:
    """One signature from some samples of one stack (median schedule + spread)."""
    header = Counter(s.header for s in samples).most_common(1)[0][0]
    win, ttl, df, opts, mss, rst = header
    same = [s for s in samples if s.header == header] or samples
    n = Counter(len(s.times_s) for s in same).most_common(1)[0][0]
    t = np.array([s.times_s for s in same if len(s.times_s) == n], dtype=float).reshape(
        -1, max(n, 1)
    )[:, :n]
    med, resid, off, slip = _robust_schedule(t)
    us = np.round(med * 1e6).astype(np.int64)
    spread = np.maximum(np.round(resid * 1e6), MIN_SPREAD_US).astype(np.int64)
    nre = n - 1 if rst and n else n  # the last time is the RST
    cum = us[:nre]
    gaps = tuple(int(g) for g in np.diff(np.concatenate([[0], cum])))
    rst_us = int(us[nre] - (cum[-1] if nre else 0)) if rst and n else None
    last_s = float(med[-1]) if n else 0.0
    time_s = max(60, math.ceil(2 * last_s))  # backoff at most doubles: silence for t..2t ends it
    fp = StateFingerprint(Method.SYN_RCVD, time_s, gaps, None, rst_us)
    feats = SynAckFeatures(
        window=win, ttl=ttl, df=df, ip_id=None, mss=mss, options=opts, wscale=None
    )
    return Signature(
        name=name,
        classes=(klass,),
        cpes=(),
        sources=(source,),
        features=feats,
        states={Method.SYN_RCVD: fp},
        spread_us={Method.SYN_RCVD: tuple(int(x) for x in spread[:nre])},
        rst_spread_us={Method.SYN_RCVD: int(spread[nre])} if rst_us is not None else {},
        offset_spread_us={Method.SYN_RCVD: max(int(round(off * 1e6)), MIN_SPREAD_US)} if n else {},
        offset_slip_us={Method.SYN_RCVD: slip} if slip is not None else {},
    )


def _robust_schedule(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, tuple | None]:
    """Median schedule, residual spread per position, spread of the common
    shift, and the shift's slips: (lo, hi, percent) of the samples whose
    shift lies beyond SLIP_Z of its spread (and SLIP_MIN_US), or None when
    fewer than SLIP_MIN_SAMPLES do (a coarse timer: Lexmark's first
    retransmission 3.0, 3.4 or 4.4 s after the SYN-ACK, an old Linux's 200 ms).

    In many stacks the whole series moves with the first SYN-ACK (its own
    lateness), the later gaps staying precise: each sample's shift is the
    median of its deviations from the median schedule; the rest is residual.
    Spreads are 1.4826 x MAD (a robust standard deviation), or the standard
    deviation of the samples without the most extreme one on each side when
    larger (occasional timer slips, which the MAD does not see).
    """
    n = t.shape[1]
    if n == 0:
        return np.zeros(0), np.zeros(0), 0.0, None
    med = np.median(t, axis=0)
    dev = t - med
    shift = np.median(dev, axis=1) if n > 1 else np.zeros(len(t))
    resid = dev - shift[:, None]
    r_spread = 1.4826 * np.median(np.abs(resid - np.median(resid, axis=0)), axis=0)
    # a timer that slips now and then (old Linux: one gap in five 200 ms
    # longer, the later arrivals moved with it) leaves the MAD at zero; the
    # standard deviation, the most extreme sample on each side left out, keeps it
    if len(t) >= 10:
        lo, hi = np.sort(resid, axis=0)[[1, -2]]
        r_spread = np.maximum(r_spread, np.std(np.clip(resid, lo, hi), axis=0))
    o_spread = 1.4826 * float(np.median(np.abs(shift - np.median(shift))))
    far = shift[np.abs(shift) > max(SLIP_Z * max(o_spread, MIN_SPREAD_US / 1e6), SLIP_MIN_US / 1e6)]
    slip = None
    if n > 1 and len(far) >= SLIP_MIN_SAMPLES:
        lo, hi = (int(round(v * 1e6)) for v in (far.min(), far.max()))
        slip = (lo, hi, max(1, int(round(100 * len(far) / len(t)))))
    return med, r_spread, o_spread, slip


_RULES = [  # (regex on the label, vendor, family, device type); first match wins
    (r"windows|microsoft", "Microsoft", "Windows", "general purpose"),
    (r"ubuntu|debian|redhat|red_hat|centos|suse|linux|liniux", "Linux", "Linux", "general purpose"),
    (r"freebsd", "FreeBSD", "FreeBSD", "general purpose"),
    (r"openbsd", "OpenBSD", "OpenBSD", "general purpose"),
    (r"netbsd", "NetBSD", "NetBSD", "general purpose"),
    (r"mac ?os|osx", "Apple", "Mac OS X", "general purpose"),
    (r"solaris|sun_os", "Oracle", "Solaris", "general purpose"),
    (r"\baix", "IBM", "AIX", "general purpose"),
    (r"irix", "SGI", "IRIX", "general purpose"),
    (r"vxworks|vxwoks", "Wind River", "VxWorks", "embedded"),
    (r"cisco.*ios|cisco_ios", "Cisco", "IOS", "router"),
    (r"netware", "Novell", "NetWare", "general purpose"),
    (r"openvms", "VSI", "OpenVMS", "general purpose"),
    (r"esxi", "VMware", "ESXi", "general purpose"),
]
_PRINTERS = (
    r"laserjet|officejet|printer|xerox|brother|canon|ricoh|lexmark|kyocera|konica"
    r"|epson|sharp|phaser|print server|oki|dell.*laser"
)


def class_for(label: str) -> OsClass:
    """Coarse class from a free-text label (``deviceNNN`` stays unknown)."""
    low = label.lower()
    if re.fullmatch(r"device\d+", low) or low == "label":
        return UNKNOWN_CLASS
    for rx, vendor, family, dev in _RULES:
        if re.search(rx, low):
            m = re.search(r"(\d[\d.x]*)", label) if family != "Windows" else None
            gen = m.group(1).upper() if m else ""
            return OsClass(vendor, family, gen, dev)
    vendor = re.split(r"[ _/-]", label.strip())[0] or "unknown"
    dev = "printer" if re.search(_PRINTERS, low) else "specialized"
    return OsClass(vendor, "embedded", "", dev)


def merge_identical(sigs: list[Signature]) -> list[Signature]:
    """One block per distinct signature; names and sources are concatenated."""
    groups: dict[tuple, list[Signature]] = defaultdict(list)
    for s in sigs:
        groups[s.key()].append(s)
    out = []
    for group in groups.values():
        s = group[0]
        if len(group) > 1:
            s = Signature(
                name=" or ".join(g.name for g in group),
                classes=tuple(dict.fromkeys(c for g in group for c in g.classes)),
                cpes=(),
                sources=tuple(src for g in group for src in g.sources),
                features=s.features,
                states=s.states,
                spread_us=s.spread_us,
                rst_spread_us=s.rst_spread_us,
            )
        out.append(s)
    return out


def all_stacks(data: Path) -> list[tuple[str, str, int, str, list[Sample]]]:
    """[(file name, tag, stack id, label, samples)] for both data files."""
    out = []
    for fname, (mapname, tag, first_zero) in FILES.items():
        labels = read_labels(data / mapname)
        for sid, samples in sorted(read_samples(data / fname, first_zero).items()):
            out.append((fname, tag, sid, labels.get(sid, f"stack{sid}"), samples))
    return out


def build(data: Path, keep=None) -> list[Signature]:
    """Signatures of every stack; ``keep(samples) -> samples`` selects samples."""
    sigs = []
    for fname, tag, sid, label, samples in all_stacks(data):
        chosen = keep(fname, sid, samples) if keep else samples
        if not chosen:
            continue
        src = f"hershel {fname} id={sid} ({len(chosen)} samples)"
        name = f"{label.replace('#', 'No.')} [{tag} id {sid}]"
        sigs.append(stack_signature(chosen, name, src, class_for(label)))
    return merge_identical(sigs)


HEADER = """\
# Cron-OS reference database: SYN_RCVD signatures of the Hershel (116 stacks)
# and Hershel+ (420 stacks) data sets, 50 samples per stack, generated by
# scripts/hershel2db.py -- do not edit by hand, re-run the converter.
#
# Data: Internet Research Lab, Texas A&M University. Z. Shamsi, A. Nandwani,
# D. Leonard, D. Loguinov, "Hershel: Single-Packet OS Fingerprinting",
# SIGMETRICS 2014; Z. Shamsi, D. Loguinov, "Unsupervised Clustering Under
# Temporal Feature Volatility in Network Stack Fingerprinting", SIGMETRICS 2016.
#
# p= is the gap between consecutive SYN-ACKs (median schedule). Spread: SynOffset
# is the robust standard deviation of a shift of the whole series (the first
# SYN-ACK's own lateness), Syn= / SynRst= what remains per arrival time;
# SynSlip=LO,HI,PCT: in PCT % of the samples the shift fell outside that
# spread, between LO and HI us (a coarse timer's first expiry slipping).
# The data has no IP ID and no window-scale value: ID= and WS= are empty.
"""


def render(data: Path) -> tuple[str, int]:
    """The text of hershel.db and its number of blocks."""
    sigs = build(data)
    return HEADER + "".join("\n" + s.block() for s in sigs), len(sigs)


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=root.parent / "shared" / "data" / "hershel")
    ap.add_argument("--out", type=Path, default=root / "cronos" / "data" / "hershel.db")
    args = ap.parse_args(argv)
    text, n = render(args.data)
    args.out.write_text(text)
    print(f"wrote {n} blocks to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
