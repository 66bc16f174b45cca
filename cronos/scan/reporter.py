"""Finished hosts of a scan become verdict records, report text and -oX data,
in the order they finished (``HostReporter``); a large scan classifies them
in worker processes so that the engine's thread only measures.

The scan command builds a ``ReportOptions`` from its arguments; nothing here
reads the command line.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.db import Database
from ..analysis.verdict import Verdict
from ..model import Observation
from ..render.output import json_line
from ..render.report import host_block


@dataclass(frozen=True)
class ReportOptions:
    """What the scan's reports need (from ``cron-os scan``'s arguments)."""

    top: int  # candidates shown and recorded
    nmap: bool  # --nmap: nmap's view beside ours, hosts wait for it
    xml: bool  # -oX
    text: bool = True  # the terminal report (not with -q)
    evidence: bool = False  # -oH / --plot: each host's result travels back for them
    #: --db files (the classification workers load the database from them)
    db_files: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class HostPiece:
    """What a finished host gives: verdict records (JSON lines), report text, -oX data."""

    target: str
    lines: tuple[str, ...]
    texts: tuple[str, ...]
    xml_host: object | None
    arch: object | None
    result: object | None = None  # the host's best port's MatchResult (HTML, plots)


def compute_host(target, observations, db, opts: ReportOptions, nmap_host) -> HostPiece:
    """Per port: the matcher's guesses, the architecture verdict (per-state
    matches, nmap's view when known), verdict records. Pure: it runs in the
    scan process, or in the classification worker of a large scan."""
    from ..analysis.verdict import decide
    from ..render.merged import render_merged
    from ..render.nmapxml import HostReport, cronos_lines, osmatches_from
    from ..render.verdict_text import render, verdict_dict

    records, texts, best, first_arch, fallback = [], [], None, None, None
    for port in sorted({o.port for o in observations}):
        obs = [o for o in observations if o.port == port]
        v = decide(f"{target}:{port}", obs, db, top=opts.top, architecture=True,
                   nmap=nmap_host)  # fmt: skip
        result, arch = (v.result if v.answered else None), v.architecture
        fallback = fallback or v.result
        first_arch = first_arch or arch
        rec = {"type": "verdict", "target": target, "port": port}
        if result is not None:
            rec.update(verdict_dict(v), target=target, port=port)
            if best is None or result.confidence > best.confidence:
                best = result
        if result is not None and opts.text:
            texts.append(
                render(v, top=opts.top)
                .rstrip("\n")
                .replace(f"Target {target}:{port}", f"Port {port}:", 1)
            )
        rec["architecture"] = {"kind": arch.kind, "summary": arch.summary,
                               "evidence": list(arch.evidence)}  # fmt: skip
        records.append(rec)
        if opts.text and opts.nmap:
            texts.append(render_merged(f"{target} port {port}", nmap_host,
                                       cronos_lines(obs), arch).rstrip("\n"))  # fmt: skip
        elif opts.text:
            texts.append(f"Architecture: {arch.summary} [{arch.kind}]")
            texts += [f"  - {e}" for e in arch.evidence]
    xml_host = None
    if opts.xml:
        cands = osmatches_from(best, top=opts.top) if best is not None else ()
        xml_host = HostReport(target, tuple(observations), cands, nmap=nmap_host)
    lines = tuple(json_line(r) for r in records)
    result = (best or fallback) if opts.evidence else None
    return HostPiece(target, lines, tuple(texts), xml_host, first_arch, result)


_WORKER_DB = None


def _worker_init(db_files: list[str]) -> None:
    import signal

    from ..analysis.db import load_db

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scan process handles Ctrl-C
    global _WORKER_DB
    _WORKER_DB = load_db([Path(f) for f in db_files])


def _worker_compute(hosts, opts) -> list[HostPiece]:
    """Classify a batch of finished hosts (one message each way, not one per host)."""
    return [compute_host(target, obs, _WORKER_DB, opts, None) for target, obs in hosts]


@dataclass
class _Batch:
    """Finished hosts handed to a worker together, and how far their
    verdicts have been emitted."""

    hosts: list
    future: object = None  # concurrent.futures.Future, None: classify here
    pieces: list | None = None
    emitted: int = 0

    def ready(self) -> bool:
        return self.future is None or self.future.done()


class HostReporter:
    """Turns each finished host into verdicts, text and records, in order.

    With ``--nmap`` a host waits until nmap has answered. A large scan
    (``WORKER_MIN_HOSTS`` hosts or more, without ``--nmap``) classifies in
    worker processes, so that the engine's thread only measures: finished
    hosts go to a worker in batches (up to ``BATCH`` hosts, or whatever
    finished since the last ``pump``, a few times a second), and results are
    emitted in the order hosts finished.
    """

    WORKER_MIN_HOSTS = 256
    BATCH = 128

    def __init__(self, opts: ReportOptions, db: Database, writer, out, nmap_future=None,
                 n_hosts: int = 0):  # fmt: skip
        self.opts = opts
        self.db = db
        self.writer = writer
        self.out = out
        self.nmap_future = nmap_future
        self.nmap_hosts: dict | None = None
        self.nmap_error: str | None = None
        self.deferred: list[tuple[str, list[Observation]]] = []
        self.xml_hosts: list = []
        self.evidence: list = []  # verdict.Verdict per finished host, for -oH / --plot
        self.batch: list[tuple[str, list[Observation]]] = []  # finished, not yet submitted
        self.pending: deque[_Batch] = deque()
        self.pool = None
        if n_hosts >= self.WORKER_MIN_HOSTS and nmap_future is None:
            from concurrent.futures import ProcessPoolExecutor

            # two: while probes run, the engine keeps one core; once they are
            # over, thousands of hosts finish together and both cores classify
            self.pool = ProcessPoolExecutor(
                max_workers=2, initializer=_worker_init, initargs=(list(opts.db_files),)
            )
            # fork the workers now, before the engine opens its sockets and ports
            for f in [self.pool.submit(int) for _ in range(2)]:
                f.result()

    def host_done(self, target: str, observations: list[Observation]) -> None:
        if self.nmap_future is not None and self.nmap_hosts is None and self.nmap_error is None:
            if not self.nmap_future.done():
                self.deferred.append((target, observations))
                return
            self._collect_nmap()
        if self.pool is not None:
            self.batch.append((target, observations))
            if len(self.batch) >= self.BATCH:
                self._submit()
            self._emit_ready()
        else:
            self._emit(self._compute(target, observations), observations)

    def _submit(self) -> None:
        if self.batch:
            # queued before it is submitted: Ctrl-C may land inside submit(),
            # and a batch in neither list would lose its hosts' verdicts
            entry = _Batch(self.batch)
            self.pending.append(entry)
            self.batch = []
            try:
                entry.future = self.pool.submit(_worker_compute, entry.hosts, self.opts)
            except Exception:  # a broken pool (a worker was killed): classify here
                entry.future = None

    def pump(self, wait: bool = False) -> None:
        """Hand the hosts finished so far to a worker; emit the results that are
        ready (all of them if ``wait``)."""
        if self.pool is not None:
            self._submit()
        self._emit_ready(wait)

    def _emit_ready(self, wait: bool = False) -> None:
        """Emit the finished batches in order. A batch leaves the queue only
        once every host of it is emitted, so an interruption anywhere (Ctrl-C
        comes at any instruction) leaves the rest to ``finish``."""
        while self.pending and (wait or self.pending[0].ready()):
            entry = self.pending[0]
            if entry.pieces is None:
                pieces = None
                if entry.future is not None:
                    try:
                        pieces = entry.future.result()
                    except Exception:  # a dead worker must not lose a host
                        pieces = None
                if pieces is None:  # no worker: classified here
                    pieces = [self._compute(target, obs) for target, obs in entry.hosts]
                entry.pieces = pieces
            while entry.emitted < len(entry.hosts):
                k = entry.emitted
                self._emit(entry.pieces[k], entry.hosts[k][1])
                entry.emitted = k + 1
            self.pending.popleft()

    def finish(self) -> None:
        if self.nmap_future is not None and self.nmap_hosts is None and self.nmap_error is None:
            self._collect_nmap()
        for target, observations in self.deferred:
            self.host_done(target, observations)
        self.deferred = []
        self.pump(wait=True)
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def _collect_nmap(self) -> None:
        from ..errors import CronosError

        try:
            self.nmap_hosts = self.nmap_future.result()
        except CronosError as exc:
            self.nmap_error = str(exc)
            print(f"cron-os: {exc}", file=sys.stderr)

    def _compute(self, target: str, observations: list[Observation]) -> HostPiece:
        nmap_host = (self.nmap_hosts or {}).get(target)
        return compute_host(target, observations, self.db, self.opts, nmap_host)

    def _emit(self, piece: HostPiece, observations: list[Observation]) -> None:
        if self.opts.evidence:
            self.evidence.append(Verdict(piece.target, tuple(observations), piece.result,
                                         piece.arch))  # fmt: skip
        if self.writer:
            for line in piece.lines:
                self.writer.write_line(line)
            self.writer.sync()  # the host is complete
        if piece.xml_host is not None:
            self.xml_hosts.append(piece.xml_host)
        if self.opts.text:
            text = host_block(piece.target, observations, "\n".join(piece.texts))
            print("\n" + text, file=self.out, flush=True)
