"""``cron-os classify [FILE|-] [--db FILE]... [-oJ FILE] [-oP FILE] [--top N] [--calibrate]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..analysis.classify import classify_stream, iter_observations
from ..analysis.db import load_db
from ..analysis.match import DEFAULT_MODEL
from ..errors import FingerprintSyntaxError, UsageError
from ..model import Observation
from ..render.parquet import ParquetWriter, is_parquet, iter_parquet
from ..render.verdict_text import render, verdict_dict
from .checks import keep_resident, output_dir, positive_seconds

#: Targets the path model is estimated from (the input's first ones).
CALIBRATION_SAMPLE = 1000


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
    p.add_argument(
        "-oP",
        dest="parquet_out",
        metavar="FILE",
        help="write the observations and verdicts as one Parquet file (columnar)",
    )
    p.add_argument("--top", type=int, default=5, metavar="N", help="candidates shown (5)")
    p.add_argument("--unknown-prior", type=float, default=DEFAULT_MODEL.unknown_prior,
                   metavar="P", help="prior probability that a target's stack is in no "
                   f"signature ({DEFAULT_MODEL.unknown_prior:g})")  # fmt: skip
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibrate", dest="calibrate", action="store_true", default=None,
                     help="estimate the path model (loss, delay, header changes, stack "
                     "popularity) by EM from the input's first 1000 targets; the default "
                     "for a file of 200 targets or more")  # fmt: skip
    cal.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                     help="use the default path model whatever the input's size")  # fmt: skip
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="classify on the Dask cluster whose scheduler is ADDRESS "
                   "(tcp://HOST:PORT); verdicts come back in the input's order")  # fmt: skip
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


def _input_lines(name: str):
    """The input's lines as they are read (a file or stdin); a binary or
    non-UTF-8 line is a one-line error naming the line."""
    try:
        fh = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    shown = "<stdin>" if name == "-" else name
    try:
        for n, raw in enumerate(fh, 1):
            if b"\0" in raw:
                raise UsageError(f"{shown}:{n}: binary file, expected text observations")
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise UsageError(f"{shown}:{n}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{shown}: cannot read: {exc.strerror or exc}") from exc
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def run(args) -> int:
    if args.top < 1:
        raise UsageError("--top must be at least 1")
    if not 0 < args.unknown_prior < 1:
        raise UsageError("--unknown-prior must be between 0 and 1 (exclusive)")
    from ..render.html_report import check_outputs, write_evidence

    check_outputs(args.html_out, args.plot_out)
    output_dir("-oX", args.xml_out)
    output_dir("-oJ", args.json_out)
    output_dir("-oP", args.parquet_out)
    positive_seconds("--timeout", args.timeout)
    positive_seconds("--window", args.window)
    db = load_db(args.db)
    keep_resident(db)
    client = None
    if args.cluster:  # before any work: a cluster that does not answer is a one-line error
        from ..cluster import connect

        for flag, v in (("-oX", args.xml_out), ("-oH", args.html_out), ("--plot", args.plot_out)):
            if v:
                raise UsageError(f"{flag} is not available with --cluster")
        client = connect(args.cluster)
    if args.pcap:
        from ..scan.replay import analyse_pcap

        if args.input != "-":
            raise UsageError("give either FILE or --pcap FILE, not both")
        from ..analysis.early import EarlyStopper

        stopper = None if args.full else EarlyStopper(db)
        kind, obs = analyse_pcap(
            args.pcap, timeout_s=args.timeout, window_s=args.window, stopper=stopper
        )
        if not obs:
            raise UsageError(f"{args.pcap}: no SYN-ACK or FIN retransmission series found")
        print(f"{args.pcap}: {len(obs)} observation(s) ({kind})", file=sys.stderr)
        items = iter(obs)
    elif args.input != "-" and is_parquet(args.input):  # a scan's or classify's -oP file
        items = iter_parquet(args.input)
    else:
        source = "<stdin>" if args.input == "-" else args.input
        items = iter_observations(_input_lines(args.input), source)
    failed: list[Exception] = []
    model, items = _model(args, _until_error(items, failed), db)
    keep = bool(args.xml_out or args.html_out or args.plot_out)
    kept = []
    json_fh = None
    if args.json_out and args.json_out != "-":
        try:
            json_fh = open(args.json_out, "w")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"{args.json_out}: cannot write: {exc.strerror or exc}") from exc
    text_out = args.json_out != "-"  # -oJ -: stdout carries the JSON Lines only
    parquet = ParquetWriter(args.parquet_out) if args.parquet_out else None
    try:
        if client is not None:
            _on_cluster(client, args, items, model, text_out, json_fh, parquet)
            return _after(failed)
        for v in classify_stream(items, db, top=args.top, model=model,
                                 architecture=bool(args.html_out)):  # fmt: skip
            if text_out:
                if args.pcap:  # the measurements and fingerprint lines, as the scan printed them
                    from ..render.report import host_block

                    sys.stdout.write(host_block(v.target, v.observations) + "\n")
                sys.stdout.write(render(v, args.top) + "\n")
            if args.json_out:
                line = json.dumps(verdict_dict(v)) + "\n"
                (json_fh or sys.stdout).write(line)
            if parquet is not None:
                for o in v.observations:
                    parquet.write(o.to_dict())
                parquet.write(verdict_dict(v))
            if args.input == "-":  # a pipe's reader sees each verdict when it is made
                sys.stdout.flush()
            if keep:
                kept.append(v)
    except OSError as exc:
        raise UsageError(f"{args.json_out}: cannot write: {exc.strerror or exc}") from exc
    finally:
        if json_fh is not None:
            json_fh.close()
        if parquet is not None:
            parquet.close()
    if failed:  # what was read before the fault has its verdicts; then the error
        raise failed[0]
    if args.xml_out:
        import time

        from ..render.nmapxml import HostReport, osmatches_from, write_nmap_xml

        hosts = [HostReport(v.target, v.observations, osmatches_from(v.result, top=args.top))
                 for v in kept]  # fmt: skip
        now = time.time()
        write_nmap_xml(args.xml_out, hosts, args=" ".join(sys.argv), start=now, end=now)
    write_evidence(kept, html_path=args.html_out, plot_path=args.plot_out, top=args.top)
    return 0


def _after(failed: list) -> int:
    if failed:  # what was read before the fault has its verdicts; then the error
        raise failed[0]
    return 0


def _on_cluster(client, args, items, model, text_out: bool, json_fh, parquet) -> None:
    """The verdicts of ``items``, classified on the cluster, written here."""
    from ..analysis.classify import iter_groups
    from ..cluster import classify_on

    try:
        for _t, obs, text, line in classify_on(client, iter_groups(items), args.db, args.top,
                                               model):  # fmt: skip
            if text_out:
                sys.stdout.write(text + "\n")
            if args.json_out:
                (json_fh or sys.stdout).write(line + "\n")
            if parquet is not None:
                for o in obs:
                    parquet.write(o.to_dict())
                parquet.write(json.loads(line))
    finally:
        client.close(timeout=5)


def _until_error(items, failed: list):
    """``items`` until a bad line: the error is kept in ``failed``, and the
    input ends there (its open targets are still classified)."""
    try:
        yield from items
    except (FingerprintSyntaxError, UsageError) as exc:
        failed.append(exc)


def _model(args, items, db):
    """The path model: the default, or estimated by EM from the input's first
    ``CALIBRATION_SAMPLE`` targets; and the items, none consumed."""
    import itertools
    from dataclasses import replace

    from ..analysis.calibrate import MIN_TARGETS, calibrate
    from ..analysis.classify import group_targets

    model = replace(DEFAULT_MODEL, unknown_prior=args.unknown_prior)
    # from a pipe, verdicts stream as targets end: no read-ahead unless asked
    if args.calibrate is False or (args.calibrate is None and args.input == "-"
                                   and not args.pcap):  # fmt: skip
        return model, items
    head, targets = [], set()
    for it in items:
        head.append(it)
        if isinstance(it, Observation):
            targets.add(it.target)
            if len(targets) > CALIBRATION_SAMPLE:
                break
    items = itertools.chain(head, items)
    groups = group_targets(o for o in head if isinstance(o, Observation))
    if args.calibrate is None and len(groups) < MIN_TARGETS:
        return model, items
    cal = calibrate(list(groups.values())[:CALIBRATION_SAMPLE], db, model=model,
                    sample=CALIBRATION_SAMPLE)  # fmt: skip
    if cal.iterations == 0:
        print(f"cron-os: {len(groups)} targets: too few to calibrate (at least {MIN_TARGETS}); "
              "default path model", file=sys.stderr)  # fmt: skip
        return model, items
    print(f"cron-os: {cal.summary()}", file=sys.stderr)
    return cal.model, items
