"""``cron-os classify [FILE|-] [--db FILE]... [-oJ FILE] [--top N] [--calibrate]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..classify import classify, read_observations
from ..db import load_db
from ..errors import UsageError
from ..match import DEFAULT_MODEL
from ..textfile import NotText, read_text
from ..verdict_text import render, verdict_dict
from .checks import output_dir, positive_seconds


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="match observations against the signature database",
        description="Match Cron-OS observations (JSON Lines), fingerprint lines or "
        "Hershel lines against the database; one verdict per target.",
    )
    p.add_argument("input", nargs="?", default="-", metavar="FILE|-", help="input (default stdin)")
    p.add_argument("--db", action="append", type=Path, default=[], metavar="FILE",
                   help="extra signature file, added to the built-in database")  # fmt: skip
    p.add_argument("-oJ", dest="json_out", metavar="FILE", help="write verdicts as JSON Lines")
    p.add_argument("--top", type=int, default=5, metavar="N", help="candidates shown (5)")
    p.add_argument("--unknown-prior", type=float, default=DEFAULT_MODEL.unknown_prior,
                   metavar="P", help="prior probability that a target's stack is in no "
                   f"signature ({DEFAULT_MODEL.unknown_prior:g})")  # fmt: skip
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibrate", dest="calibrate", action="store_true", default=None,
                     help="estimate the path model (loss, delay, header changes, stack "
                     "popularity) from the input by EM; the default from 200 targets "
                     "on")  # fmt: skip
    cal.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                     help="use the default path model whatever the input's size")  # fmt: skip
    p.add_argument("--pcap", metavar="FILE",
                   help="derive the observations from a capture (a scan's -w file, or any "
                   "tcpdump capture: retransmission series are found passively)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="with --pcap: the scan's --timeout, for the same Time= (60)")  # fmt: skip
    p.add_argument("--window", type=float, default=180.0, metavar="S",
                   help="with --pcap: the scan's --window (180)")  # fmt: skip
    p.add_argument("--full", action="store_true",
                   help="with --pcap: the scan ran with --full (no early stop)")  # fmt: skip
    p.add_argument("--plot", dest="plot_out", metavar="FILE",
                   help="timeline against the candidates (.png/.svg/.pdf)")  # fmt: skip
    p.add_argument("-oH", dest="html_out", metavar="FILE", help="self-contained HTML report")
    p.add_argument("-oX", dest="xml_out", metavar="FILE", help="nmap-compatible XML")
    p.set_defaults(func=run)


def _read_input(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return read_text(name)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    except NotText as exc:
        what = "binary file, expected text observations" if exc.binary else "not UTF-8 text"
        raise UsageError(f"{name}: {what}") from exc


def run(args) -> int:
    if args.top < 1:
        raise UsageError("--top must be at least 1")
    if not 0 < args.unknown_prior < 1:
        raise UsageError("--unknown-prior must be between 0 and 1 (exclusive)")
    from ..html_report import check_outputs, write_evidence

    check_outputs(args.html_out, args.plot_out)
    output_dir("-oX", args.xml_out)
    output_dir("-oJ", args.json_out)
    positive_seconds("--timeout", args.timeout)
    positive_seconds("--window", args.window)
    db = load_db(args.db)
    if args.pcap:
        from ..replay import analyse_pcap

        if args.input != "-":
            raise UsageError("give either FILE or --pcap FILE, not both")
        from ..early import EarlyStopper

        stopper = None if args.full else EarlyStopper(db)
        kind, obs = analyse_pcap(
            args.pcap, timeout_s=args.timeout, window_s=args.window, stopper=stopper
        )
        if not obs:
            raise UsageError(f"{args.pcap}: no SYN-ACK or FIN retransmission series found")
        print(f"{args.pcap}: {len(obs)} observation(s) ({kind})", file=sys.stderr)
    else:
        source = "<stdin>" if args.input == "-" else args.input
        obs = read_observations(_read_input(args.input), source)
    model = _model(args, obs, db)
    verdicts = classify(obs, db, top=args.top, model=model)
    if args.xml_out:
        import time

        from ..nmapxml import HostReport, osmatches_from, write_nmap_xml

        hosts = [HostReport(v.target, v.observations, osmatches_from(v.result, top=args.top))
                 for v in verdicts]  # fmt: skip
        now = time.time()
        write_nmap_xml(args.xml_out, hosts, args=" ".join(sys.argv), start=now, end=now)
    write_evidence(
        obs, html_path=args.html_out, plot_path=args.plot_out, db=db,
        results={v.target: v.result for v in verdicts}, top=args.top,
    )  # fmt: skip
    for v in verdicts:
        if args.pcap:  # the measurements and fingerprint lines, as the live scan printed them
            from ..report import host_block

            sys.stdout.write(host_block(v.target, v.observations) + "\n")
        sys.stdout.write(render(v, args.top) + "\n")
    if args.json_out:
        text = "".join(json.dumps(verdict_dict(v)) + "\n" for v in verdicts)
        if args.json_out == "-":
            sys.stdout.write(text)
        else:
            try:
                Path(args.json_out).write_text(text)
            except OSError as exc:
                raise UsageError(f"{args.json_out}: cannot write: {exc.strerror or exc}") from exc
    return 0


def _model(args, obs, db):
    """The path model: the default, or estimated from the input (EM)."""
    from dataclasses import replace

    from ..calibrate import MIN_TARGETS, calibrate
    from ..classify import group_targets

    model = replace(DEFAULT_MODEL, unknown_prior=args.unknown_prior)
    groups = group_targets(obs)
    want = args.calibrate if args.calibrate is not None else len(groups) >= MIN_TARGETS
    if not want:
        return model
    cal = calibrate(list(groups.values()), db, model=model)
    if cal.iterations == 0:
        print(f"cron-os: {len(groups)} targets: too few to calibrate (at least {MIN_TARGETS}); "
              "default path model", file=sys.stderr)  # fmt: skip
        return model
    print(f"cron-os: {cal.summary()}", file=sys.stderr)
    return cal.model
