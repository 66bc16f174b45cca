"""One scan, from a checked ``ScanConfig`` to its outputs.

``run_scan`` builds the jobs (skipping what ``--resume`` finds done), runs
the live engine (``cronos.net.engine``) with the early stopper, streams
every measurement to the JSON Lines file as it completes, hands each
finished host to the ``HostReporter`` (verdicts, report text, -oX data), and
writes the pcap, HTML, plot and XML files at the end, also when the scan is
interrupted (every ``finally`` runs: nothing measured is lost).

The caller (``cron-os scan``) has entered the namespace, checked privileges
and loaded the database; it prints the summary from the ``ScanSummary``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from ..analysis.db import Database
from ..errors import UsageError
from ..model import Observation
from ..render.output import JsonLinesWriter
from .config import MAX_HOSTS_WITHOUT_YES, ScanConfig
from .core import CoreConfig, Job
from .reporter import HostReporter, ReportOptions
from .targets import TargetSet


class Progress:
    """What the scan tells a progress display (this one shows nothing)."""

    def __init__(self) -> None:
        self.done = 0  # measurements finished
        self.hosts_done = 0

    def tick(self, stats, in_flight: int) -> None:
        """A few times a second: the engine's counters and the probes running."""

    def clear(self) -> None:
        """A host's report is about to be printed where the line is."""


@dataclass
class ScanSummary:
    stats: object  # cronos.net.engine.EngineStats
    skipped: int = 0  # measurements --resume found done
    verdict_times: list[float] = field(default_factory=list)  # early stops: s to the verdict
    nmap_error: bool = False
    addresses_skipped: dict[str, int] = field(default_factory=dict)


def target_set(cfg: ScanConfig) -> TargetSet:
    """The targets, after ``--exclude-file``; more than the limit needs ``--yes``."""
    targets = TargetSet(list(cfg.targets), list(cfg.exclude), allow_special=cfg.allow_special,
                        family=cfg.family, order=cfg.order)  # fmt: skip
    n = targets.upper_bound()
    if n > MAX_HOSTS_WITHOUT_YES and not cfg.allow_large:
        raise UsageError(f"{n} hosts to scan: more than {MAX_HOSTS_WITHOUT_YES} needs --yes")
    return targets


def done_keys(path: str) -> set[tuple]:
    """Measurements already complete in a JSON Lines file (for --resume)."""
    import os

    done: set[tuple] = set()
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            try:
                r = json.loads(line)
                if r.get("type") == "verdict":
                    continue  # the scan's own verdict lines: no measurement to skip
                if r.get("status") != "aborted":
                    done.add((r["target"], int(r["port"]), r["method"], int(r["try"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                # a line cut by a kill: everything before it is intact
                print(f"cron-os: {path}:{n}: incomplete record ignored", file=sys.stderr)
    return done


def run_scan(
    cfg: ScanConfig,
    db: Database,
    targets: TargetSet,
    *,
    out: TextIO = sys.stdout,
    progress: Progress | None = None,
    done: set[tuple] | None = None,
) -> ScanSummary:
    """Measure every target, report each host as it finishes, write the files.

    ``done``: (target, port, method letter, try) already measured
    (``done_keys`` of the ``--resume`` file, read from it when None)."""
    from ..net.engine import Engine, EngineConfig

    o = cfg.outputs
    progress = progress or Progress()
    if done is None:
        done = done_keys(o.resume) if o.resume else set()
    remaining: dict[str, int] = defaultdict(lambda: cfg.per_target)
    summary = ScanSummary(stats=None, addresses_skipped=targets.skipped)

    def jobs() -> Iterator[Job]:
        for t in targets:
            for p in cfg.ports:
                for m in cfg.methods:
                    for k in range(1, cfg.tries + 1):
                        if (t, p, m.value, k) in done:
                            remaining[t] -= 1
                            summary.skipped += 1
                            continue
                        yield Job(t, p, m, k)

    per_host: dict[str, list[Observation]] = defaultdict(list)
    writer = None
    if o.records or o.parquet_out:
        from ..render.parquet import ParquetWriter, Writers

        writer = Writers([JsonLinesWriter(o.records) if o.records else None,
                          ParquetWriter(o.parquet_out) if o.parquet_out else None])  # fmt: skip

    def on_result(obs: Observation) -> None:
        if obs.verdict_s is not None:
            summary.verdict_times.append(obs.verdict_s)
        if writer:
            writer.write(obs.to_dict())
        progress.done += 1
        per_host[obs.target].append(obs)
        remaining[obs.target] -= 1
        if remaining[obs.target] <= 0:
            observations = per_host.pop(obs.target)
            remaining.pop(obs.target, None)
            host_done(obs.target, observations)

    def host_done(target: str, observations: list[Observation]) -> None:
        progress.hosts_done += 1
        if not o.quiet:  # the host's report is printed where the line was
            progress.clear()
        reporter.host_done(target, observations)

    engine_cfg = EngineConfig(
        core=CoreConfig(timeout_s=cfg.timeout_s, window_s=max(cfg.window_s, 1.0),
                        payload=cfg.payload, sack=cfg.sack),
        max_in_flight=cfg.max_in_flight,
        max_rate_pps=cfg.max_rate_pps,
        interface=cfg.interface,
    )  # fmt: skip
    nmap_future = None
    if cfg.nmap:
        from concurrent.futures import ThreadPoolExecutor

        from ..net.nmap import run_nmap

        pool = ThreadPoolExecutor(max_workers=1)  # one nmap subprocess for the batch
        extra = ("-e", cfg.interface) if cfg.interface else ()
        nmap_future = pool.submit(run_nmap, list(targets), list(cfg.ports), extra_args=extra)
        pool.shutdown(wait=False)
    opts = ReportOptions(o.top, cfg.nmap, bool(o.xml_out), not o.quiet, o.evidence, cfg.db_files)
    reporter = HostReporter(opts, db, writer, out, nmap_future, targets.upper_bound())

    def tick(stats, in_flight: int) -> None:
        reporter.pump()
        progress.tick(stats, in_flight)

    hint = list(targets) if targets.upper_bound() <= 64 else None
    sink = close_pcap = None
    if o.pcap_out:
        from ..net.pcapio import open_pcap_sink

        sink, close_pcap = open_pcap_sink(o.pcap_out)
    stopper = None
    if cfg.early_stop:
        from ..analysis.early import EarlyStopper

        stopper = EarlyStopper(db)
    engine = Engine(engine_cfg, on_result, packet_sink=sink, on_tick=tick, early_stop=stopper)
    summary.stats = engine.stats
    try:
        engine.run(jobs(), targets_hint=hint)
    finally:
        progress.clear()
        if close_pcap is not None:
            close_pcap()
        for target, observations in list(per_host.items()):  # interrupted: partial hosts too
            if observations:
                host_done(target, observations)
        reporter.finish()
        if writer:
            writer.close()
        if o.evidence:
            from ..render.html_report import write_evidence

            write_evidence(reporter.evidence, html_path=o.html_out, plot_path=o.plot_out,
                           top=o.top)  # fmt: skip
        if o.xml_out:
            from ..render.nmapxml import write_nmap_xml

            write_nmap_xml(o.xml_out, reporter.xml_hosts, args=o.command_line,
                           start=engine.stats.started or time.time(), end=time.time())  # fmt: skip
    summary.nmap_error = bool(reporter.nmap_error)
    return summary
