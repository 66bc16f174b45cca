"""Scanning and classifying on a Dask cluster (``distributed``).

The scheduler is Dask's own (``dask scheduler``). A scanner worker is a Dask
worker started by ``cron-os worker`` (root, on a machine with its own source
address) that offers the resource ``cronos-scanner=1``: one shard at a time.

``cron-os scan --cluster ADDRESS ...`` splits the targets into shards
(``--shard I/N --seed S``: ZMap's permutation, every target in exactly one
shard) and submits one task per shard. A task runs ``cron-os scan`` on its
worker as a child process (in the worker's ``--netns`` when given, killed
with the worker: PR_SET_PDEATHSIG), with ``--resume`` on an anonymous file
that first holds what the client already received of that shard, and
streams every record the child appends to the client through a Dask queue,
in batches. The client writes the records to its outputs as they arrive and
keeps, per shard, the keys it has (a Dask variable the task reads when it
starts): a shard re-run after its worker was lost measures only what is
missing, and a record received twice (measured in the last second before a
loss) is written once. Ctrl-C on the client sets a Dask event that the tasks
watch: they stop their scans, which record their measurements in flight as
``aborted``, as a local scan does.

``cron-os classify --cluster ADDRESS FILE`` reads FILE on the client, sends
chunks of targets to the workers (any worker, scanner or not) and writes the
verdicts in the input's order.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator

from .errors import DependencyError, UsageError

RESOURCE = "cronos-scanner"
ENV_NETNS = "CRONOS_WORKER_NETNS"
#: records are sent to the client at least this often (s), and in batches
BATCH_S = 0.2
#: the client publishes each shard's received keys this often (s)
PUBLISH_S = 1.0


def _quiet_dask() -> None:
    for name in ("distributed", "distributed.client", "distributed.worker", "distributed.core",
                 "distributed.scheduler", "distributed.comm", "distributed.batched"):  # fmt: skip
        logging.getLogger(name).setLevel(logging.ERROR)


def _distributed():
    try:
        import distributed
    except ImportError as exc:  # a dependency of pyproject.toml: only a broken install
        raise DependencyError(
            f"--cluster needs Dask's distributed ({exc}); run make deps"
        ) from None
    _quiet_dask()
    return distributed


def _reachable(address: str, what: str) -> None:
    """A TCP connection to ``address`` (tcp://HOST:PORT) opens: a refused or
    unroutable address is a one-line error at once, not after Dask's retries."""
    import socket

    host, _, port = address.partition("://")[2].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except ValueError:
        raise UsageError(f"{what} {address}: expected tcp://HOST:PORT") from None
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise UsageError(f"{what} {address}: no Dask scheduler answers ({why})") from None


def connect(address: str):
    """A Dask client of the scheduler at ``address`` (one-line error if none answers)."""
    distributed = _distributed()
    if "://" not in address:
        address = "tcp://" + address
    _reachable(address, "--cluster")
    try:
        return distributed.Client(address, timeout=10, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--cluster {address}: no Dask scheduler answers ({exc})") from None


# --- the worker side -------------------------------------------------------------------


def _anon_file(data: bytes = b""):
    """An anonymous file (no name on disk: nothing is left if we die) and a path
    another process of ours can open it by."""
    fh = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    fh.write(data)
    fh.flush()
    return fh, f"/proc/{os.getpid()}/fd/{fh.fileno()}"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: our parent's end is our SIGTERM


def scan_shard(argv: list[str], files: dict[str, bytes], shard: int, shards: int, seed: int,
               name: str) -> dict:  # fmt: skip
    """Task: scan shard ``shard`` of ``shards`` with ``cron-os scan ARGV`` on this
    worker, streaming each record to the queue ``name``. ``files``: option ->
    content of the files the scan reads (-iL, --exclude-file, --db), as the
    client read them."""
    from distributed import Event, Queue, Variable

    queue, stop = Queue(name), Event(name + "-stop")
    done = Variable(f"{name}-done-{shard}").get(timeout=30) or []
    keep = []
    args = list(argv)
    for opt, data in files.items():
        fh, path = _anon_file(data)
        keep.append(fh)
        args += [opt.partition("#")[0], path]  # "--db#1": the second --db file
    out, out_path = _anon_file("".join(x + "\n" for x in done).encode())
    keep.append(out)
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    keep.append(err)
    netns = os.environ.get(ENV_NETNS)
    cmd = [sys.executable, "-m", "cronos", "scan", *args, "--shard", f"{shard}/{shards}",
           "--seed", str(seed), "--resume", out_path, "-q", "--no-progress",
           *(["--netns", netns] if netns else [])]  # fmt: skip
    sent, offset, buf = 0, out.tell(), b""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err, preexec_fn=_die_with_parent)  # fmt: skip
    try:
        stopped = False
        while True:
            rc = proc.poll()
            if not stopped and stop.is_set():
                proc.send_signal(signal.SIGINT)  # records the measurements in flight
                stopped = True
            chunk = os.pread(out.fileno(), 1 << 20, offset)
            offset += len(chunk)
            buf += chunk
            lines, _, buf = buf.rpartition(b"\n")
            if lines:
                batch = [x for x in lines.decode("utf-8", "replace").split("\n") if x]
                queue.put((shard, batch))
                sent += len(batch)
            if rc is not None and not chunk:
                break
            if rc is None:
                time.sleep(BATCH_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        err.seek(0)
        tail = err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
        for fh in keep:
            fh.close()
    return {"shard": shard, "rc": proc.returncode, "sent": sent, "stderr": tail,
            "worker": os.environ.get(ENV_NETNS) or os.uname().nodename}  # fmt: skip


WORKER_DIR_PREFIX = "cronos-worker-"


def cleanup_stale() -> list[str]:
    """Remove the local directories of workers that were killed (SIGKILL): a
    ``cronos-worker-PID-*`` directory in the temporary directory whose PID is
    gone. Returns the paths removed."""
    import shutil

    removed = []
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        if not entry.startswith(WORKER_DIR_PREFIX):
            continue
        pid = entry[len(WORKER_DIR_PREFIX) :].partition("-")[0]
        path = os.path.join(tmp, entry)
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def run_worker(address: str, netns: str | None, name: str | None) -> int:
    """``cron-os worker``: a Dask worker offering one scanner slot (and one
    thread for classification), until SIGINT/SIGTERM."""
    import asyncio
    import shutil

    distributed = _distributed()
    if netns:
        os.environ[ENV_NETNS] = netns
    if "://" not in address:
        address = "tcp://" + address
    _reachable(address, "scheduler")
    for path in cleanup_stale():
        print(f"cron-os: removed {path} left by a killed worker", file=sys.stderr)
    local = tempfile.mkdtemp(prefix=f"{WORKER_DIR_PREFIX}{os.getpid()}-")

    async def serve() -> None:
        w = distributed.Worker(address, nthreads=1, resources={RESOURCE: 1}, name=name,
                               local_directory=local, validate=False)  # fmt: skip
        try:
            await asyncio.wait_for(w.start(), timeout=10)
        except (OSError, TimeoutError):
            with contextlib.suppress(Exception):
                await w.close(timeout=2)
            raise UsageError(f"{address}: no Dask scheduler answers (10 s)") from None
        print(f"cron-os worker {w.address} ({netns or 'this namespace'}) joined {address}",
              file=sys.stderr, flush=True)  # fmt: skip
        try:
            await w.finished()
        finally:
            await w.close(timeout=5)

    try:
        asyncio.run(serve())
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return 0


# --- the client side ---------------------------------------------------------------------


def _key(rec: dict) -> tuple:
    if rec.get("type") == "verdict":
        return ("verdict", rec.get("target"), rec.get("port"))
    return (rec.get("target"), rec.get("port"), rec.get("method"), rec.get("try"))


class ClusterScan:
    """The client's side of a cluster scan: submit the shards, take the records
    as they come, each once, and republish what each shard has."""

    def __init__(self, client, argv: list[str], files: dict[str, bytes], shards: int, seed: int):
        from distributed import Event, Queue, Variable

        self.client = client
        self.name = f"cronos-{uuid.uuid4().hex[:12]}"
        self.queue = Queue(self.name, client=client)
        self.stop = Event(self.name + "-stop", client=client)
        self.vars = [Variable(f"{self.name}-done-{i}", client=client) for i in range(shards)]
        for v in self.vars:
            v.set([])
        self.have: list[list[str]] = [[] for _ in range(shards)]
        self.seen: set[tuple] = set()
        self.dirty: set[int] = set()
        self.duplicates = 0
        self.futures = [
            client.submit(scan_shard, argv, files, i, shards, seed, self.name,
                          key=f"{self.name}-shard-{i}", resources={RESOURCE: 1}, pure=False)
            for i in range(shards)
        ]  # fmt: skip

    def records(self, deadline: float | None = None) -> Iterator[dict]:
        """Every record once, as it arrives, until every shard is done (or the
        monotonic clock passes ``deadline``)."""
        last = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            finished = all(f.done() for f in self.futures)
            items = self.queue.get(batch=True)  # what is there now, maybe nothing
            if not items and not finished:
                time.sleep(BATCH_S)
            for shard, lines in items:
                for line in lines:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a kill: its measurement is re-run
                    key = _key(rec)
                    aborted = rec.get("status") == "aborted"
                    if key in self.seen:
                        self.duplicates += 1
                        continue
                    if not aborted:
                        self.seen.add(key)
                        if key[0] != "verdict":
                            self.have[shard].append(line)
                            self.dirty.add(shard)
                    yield rec
            if time.monotonic() - last >= PUBLISH_S:
                self.publish()
                last = time.monotonic()
            if finished and not items:
                return

    def publish(self) -> None:
        for i in sorted(self.dirty):
            self.vars[i].set(list(self.have[i]))
        self.dirty.clear()

    def results(self) -> list[dict]:
        out = []
        for f in self.futures:
            try:
                out.append(f.result(timeout=60))
            except Exception as exc:  # a task that failed for good (KilledWorker...)
                out.append({"shard": None, "rc": None, "stderr": [f"{type(exc).__name__}: {exc}"]})
        return out

    def cancel(self) -> None:
        """Stop every shard's scan (each records its measurements in flight)."""
        with contextlib.suppress(Exception):
            self.stop.set()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.cancel(self.futures)
        for v in self.vars:
            with contextlib.suppress(Exception):
                v.delete()
        with contextlib.suppress(Exception):
            self.client.close(timeout=5)


def scan_workers(client) -> int:
    """Scanner workers the scheduler knows now."""
    info = client.scheduler_info()
    return sum(1 for w in info.get("workers", {}).values()
               if w.get("resources", {}).get(RESOURCE))  # fmt: skip


# --- classify on the cluster -------------------------------------------------------------

_DB = {}


def classify_chunk(groups: list, db_texts: tuple[tuple[str, str], ...], top: int,
                   model) -> list[tuple[str, str]]:  # fmt: skip
    """Task: per (target, observations) of a chunk, its verdict as text and as
    a JSON record. ``db_texts``: the client's ``--db`` files (name, content)."""
    from .analysis.db import load_db
    from .analysis.verdict import decide
    from .render.verdict_text import render, verdict_dict

    db = _DB.get(db_texts)
    if db is None:
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="cronos-db-") as tmp:
            paths = []
            for i, (name, text) in enumerate(db_texts):
                p = Path(tmp) / f"{i}-{os.path.basename(name)}"
                p.write_text(text, encoding="utf-8")
                paths.append(p)
            db = load_db(paths)
        _DB.clear()
        _DB[db_texts] = db
    out = []
    for t, obs in groups:
        v = decide(t, obs, db, top=top, model=model)
        out.append((render(v, top), json.dumps(verdict_dict(v))))
    return out


def classify_on(client, groups: Iterable, db_files, top: int, model, chunk: int = 200,
                ahead: int = 4) -> Iterator[tuple[str, list, str, str]]:  # fmt: skip
    """(target, observations, verdict text, verdict JSON) of each of ``groups``,
    in input order, classified on the cluster's workers (at most ``ahead``
    chunks of ``chunk`` targets per worker in flight: bounded memory)."""
    from collections import deque

    texts = []
    for f in db_files:
        with open(f, encoding="utf-8") as fh:
            texts.append((str(f), fh.read()))
    db_texts = tuple(texts)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    pending: deque = deque()
    model_f = client.scatter(model, broadcast=True) if model is not None else None
    batch: list = []

    def done(b, fut):
        for (t, obs), (text, line) in zip(b, fut.result(), strict=True):
            yield t, obs, text, line

    for g in groups:
        batch.append(g)
        if len(batch) >= chunk:
            pending.append((batch, client.submit(classify_chunk, batch, db_texts, top, model_f,
                                                 pure=False)))  # fmt: skip
            batch = []
            while len(pending) >= ahead * n_workers:
                yield from done(*pending.popleft())
    if batch:
        pending.append((batch, client.submit(classify_chunk, batch, db_texts, top, model_f,
                                             pure=False)))  # fmt: skip
    while pending:
        yield from done(*pending.popleft())


# --- cron-os scan --cluster ----------------------------------------------------------------

#: scan options a cluster scan cannot take (each needs the scan's own machine)
LOCAL_ONLY = (("xml_out", "-oX"), ("pcap_out", "-w"), ("plot_out", "--plot"),
              ("html_out", "-oH"), ("resume", "--resume"))  # fmt: skip


def _payload_text(payload: bytes) -> str:
    return payload.decode("utf-8").replace("\r", "\\r").replace("\n", "\\n")


def worker_argv(cfg) -> tuple[list[str], dict[str, bytes]]:
    """The ``cron-os scan`` options every shard runs with, and the files it
    reads (their content: the workers need not share a file system)."""
    from .scan.targets import TargetSet

    ts = TargetSet(list(cfg.targets), [], allow_special=cfg.allow_special, family=cfg.family)
    specs = [str(n) for n in ts.parts] + list(ts.zoned)  # names resolved here, once
    argv = ["-p", ",".join(map(str, cfg.ports)), "-m", "".join(m.value for m in cfg.methods),
            "--tries", str(cfg.tries), "--timeout", repr(cfg.timeout_s),
            "--window", repr(cfg.window_s), "--payload", _payload_text(cfg.payload),
            "--max-rate", repr(cfg.max_rate_pps), "--max-hosts", str(cfg.max_in_flight),
            "--top", str(cfg.outputs.top), "--yes"]  # fmt: skip
    if cfg.sack:
        argv.append("--sack")
    if not cfg.early_stop:
        argv.append("--full")
    if cfg.allow_special:
        argv.append("--allow-special")
    files = {"-iL": "".join(s + "\n" for s in specs).encode()}
    if cfg.exclude:
        files["--exclude-file"] = "".join(e + "\n" for e in cfg.exclude).encode()
    for i, f in enumerate(cfg.db_files):
        with open(f, "rb") as fh:
            files[f"--db#{i}"] = fh.read()
    return argv, files


def cluster_scan(cfg, address: str, shards: int | None, out) -> int:
    """``cron-os scan --cluster``: exit 0, or 1 when a shard failed or lost packets."""
    import random

    from .render.output import JsonLinesWriter
    from .render.parquet import ParquetWriter, Writers

    o = cfg.outputs
    for attr, flag in LOCAL_ONLY:
        if getattr(o, attr):
            raise UsageError(f"{flag} is not available with --cluster")
    if cfg.nmap or cfg.interface:
        raise UsageError(f"{'--nmap' if cfg.nmap else '-e'} is not available with --cluster")
    if cfg.order is not None and cfg.order.shards > 1:
        raise UsageError("--shard is not for --cluster: the client makes the shards (--shards N)")
    argv, files = worker_argv(cfg)
    client = connect(address)
    try:
        deadline = time.monotonic() + 30
        while (n := scan_workers(client)) == 0:
            if time.monotonic() > deadline:
                raise UsageError(f"--cluster {address}: no scanner worker joined in 30 s "
                                 "(start one with `cron-os worker`)")  # fmt: skip
            time.sleep(0.5)
        n_shards = shards or 4 * n
        seed = cfg.order.seed if cfg.order is not None else random.randrange(1 << 63)
        if not o.quiet:
            print(f"Starting Cron-OS on a cluster: {n} scanner worker(s), {n_shards} shards "
                  f"(seed {seed})", file=out, flush=True)  # fmt: skip
        writer = Writers([JsonLinesWriter(o.json_out) if o.json_out else None,
                          ParquetWriter(o.parquet_out) if o.parquet_out else None])  # fmt: skip
        job = ClusterScan(client, argv, files, n_shards, seed)
        counts = {"measurement": 0, "verdict": 0}
        text = not o.quiet and o.json_out != "-"  # -oJ -: stdout carries the records only
        started = time.monotonic()
        try:
            try:
                for rec in job.records():
                    writer.write(rec)
                    kind = "verdict" if rec.get("type") == "verdict" else "measurement"
                    counts[kind] += 1
                    if kind == "verdict" and text:
                        print(_verdict_line(rec), file=out, flush=True)
            except BaseException:
                job.cancel()  # the shards stop and send what they measured (aborted)
                with contextlib.suppress(BaseException):
                    for rec in job.records(deadline=time.monotonic() + 20.0):
                        writer.write(rec)
                raise
        finally:
            writer.close()
        results = job.results()
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=5)
    bad = [r for r in results if r.get("rc") not in (0,)]
    if not o.quiet:
        print(f"\nCron-OS done on the cluster: {counts['measurement']} measurement(s), "
              f"{counts['verdict']} verdict record(s) from {n_shards} shards in "
              f"{time.monotonic() - started:.1f} s; {job.duplicates} duplicate record(s) "
              f"dropped", file=out, flush=True)  # fmt: skip
    for r in bad:
        why = "; ".join(r.get("stderr") or []) or "no message"
        print(f"cron-os: shard {r.get('shard')} (worker {r.get('worker', '?')}) ended with "
              f"exit {r.get('rc')}: {why}", file=sys.stderr)  # fmt: skip
    return 1 if bad else 0


def _verdict_line(rec: dict) -> str:
    where = f"{rec.get('target')}:{rec.get('port')}"
    if rec.get("verdict") is None:
        return f"{where}  (no verdict)"
    arch = (rec.get("architecture") or {}).get("kind")
    conf = rec.get("confidence")
    return f"{where}  {rec['verdict']} ({conf:.2f})" + (f" [{arch}]" if arch else "")
