"""``cron-os plot FILE -o OUT.png [--db FILE]... [--top N] [-oH REPORT.html]``.

FILE: Cron-OS JSON Lines (``scan -oJ``), fingerprint lines, or a packet
capture (``scan -w``, tcpdump): captures are replayed (our probes) or read
passively (anybody's traffic), as ``classify --pcap`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw observed retransmissions against the best signatures' schedules",
        description="Plot each measurement (host, state, try) on a time axis, under it the "
        "schedules of the best matching signatures, lost packets marked.",
    )
    p.add_argument("input", metavar="FILE", help="JSON Lines, fingerprint lines, pcap or pcapng")
    p.add_argument("-o", dest="output", required=True, metavar="OUT",
                   help="image to write: .png, .svg or .pdf")  # fmt: skip
    p.add_argument("--db", action="append", type=Path, default=[], metavar="FILE",
                   help="extra signature file, added to the built-in database")  # fmt: skip
    p.add_argument("--top", type=int, default=3, metavar="N",
                   help="candidate schedules drawn per measurement (default 3)")  # fmt: skip
    p.add_argument("-oH", dest="html_out", metavar="FILE", help="also write an HTML report")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="pcap replay: the scan's --timeout (default 60)")  # fmt: skip
    p.add_argument("--window", type=float, default=180.0, metavar="S",
                   help="pcap replay: the scan's --window (default 180)")  # fmt: skip
    p.set_defaults(func=run)


def load_observations(name: str, timeout_s: float = 60.0, window_s: float = 180.0):
    """Observations from any input Cron-OS reads; ``(kind, observations)``."""
    try:
        with open(name, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if head in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                b"\x0a\x0d\x0d\x0a"):  # fmt: skip
        from ..scan.replay import analyse_pcap

        kind, obs = analyse_pcap(name, timeout_s=timeout_s, window_s=window_s)
        if not obs:
            raise UsageError(f"{name}: no Cron-OS probe and no retransmission series found")
        return kind, obs
    from ..analysis.classify import read_observations

    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{name}: cannot read as text: {exc}") from None
    return "text", read_observations(text, name)


def run(args) -> int:
    if args.top < 0:
        raise UsageError("--top must be >= 0")
    from ..render.plot import FORMATS

    if Path(args.output).suffix.lower() not in FORMATS:
        raise UsageError(f"-o {args.output}: plot format must be one of {', '.join(FORMATS)}")
    from .checks import output_dir, positive_seconds

    output_dir("-o", args.output)
    output_dir("-oH", args.html_out)
    positive_seconds("--timeout", args.timeout)
    positive_seconds("--window", args.window)
    from ..analysis.classify import classify
    from ..analysis.db import load_db
    from ..render.html_report import write_evidence
    from ..render.plot import plot_timeline

    db = load_db(args.db)  # a bad --db is an argument error: before reading the input
    kind, obs = load_observations(args.input, args.timeout, args.window)
    verdicts = classify(obs, db, top=max(args.top, 5), architecture=bool(args.html_out))
    plot_timeline(obs, {v.target: v.result for v in verdicts}, args.output, top=args.top)
    if args.html_out:
        write_evidence(verdicts, html_path=args.html_out)
    print(f"cron-os: {len(obs)} measurement(s) ({kind}) plotted to {args.output}", file=sys.stderr)
    return 0
