"""Lab state files: what a lab created, so that anyone can remove it.

``/run/cronos/labs/<id>.json`` is written before the lab's first object
exists and rewritten (atomically) each time one is added. A process is
identified by its pid *and* its start time (field 22 of ``/proc/<pid>/stat``)
so that a recycled pid is never killed.

Fields: ``id``, ``profiles``, ``persistent``, ``owner`` ({pid, start}),
``created`` (unix time), ``scanner_ns``, ``namespaces``, ``interfaces``,
``pids`` ([{pid, start, ns, argv}]), ``files``, ``targets`` (``LabTarget``
as JSON).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabError

STATE_DIR = Path("/run/cronos/labs")
NETNS_RE = re.compile(r"^cronos-[0-9a-f]{6}-[A-Za-z0-9]+$")
_KILL_GRACE_S = 2.0


def proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def proc_alive(pid: int, start: int | None) -> bool:
    now = proc_start(pid)
    return now is not None and (start is None or now == start) and not _zombie(pid)


def proc_entry(pid: int, ns: str | None, argv) -> dict:
    return {"pid": pid, "start": proc_start(pid), "ns": ns, "argv": list(argv)}


@dataclass
class LabRecord:
    """The mutable, persisted record of one lab."""

    id: str
    profiles: list[str]
    persistent: bool = False
    owner: dict = field(default_factory=dict)
    created: float = 0.0
    scanner_ns: str = ""
    namespaces: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    pids: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def new(cls, lab_id: str, profiles: list[str], persistent: bool) -> LabRecord:
        me = os.getpid()
        rec = cls(lab_id, list(profiles), persistent, {"pid": me, "start": proc_start(me)},
                  time.time(), f"cronos-{lab_id}-scan")  # fmt: skip
        rec.save()
        return rec

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.id}.json"

    def add(self, key: str, value) -> None:
        with self._lock:  # a setup may start helpers from threads
            getattr(self, key).append(value)
            self._save()

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        data = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        try:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise LabError(f"cannot write lab state {self.path}: {exc}") from exc

    def owner_alive(self) -> bool:
        return proc_alive(self.owner.get("pid", -1), self.owner.get("start"))

    @classmethod
    def load(cls, lab_id: str) -> LabRecord:
        if not re.fullmatch(r"[0-9a-f]{6}", lab_id):
            raise LabError(f"bad lab id {lab_id!r} (6 hex characters)")
        path = STATE_DIR / f"{lab_id}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise LabError(f"no lab {lab_id} (no {path})") from exc
        except (OSError, ValueError) as exc:
            raise LabError(f"unreadable lab state {path}: {exc}") from exc
        known = {k for k in cls.__dataclass_fields__ if not k.startswith("_")}
        return cls(**{k: v for k, v in data.items() if k in known})


def list_ids() -> list[str]:
    if not STATE_DIR.is_dir():
        return []
    return sorted(p.stem for p in STATE_DIR.glob("*.json") if re.fullmatch(r"[0-9a-f]{6}", p.stem))


def list_netns() -> list[str]:
    """Every ``cronos-*`` namespace name (others are never looked at)."""
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return [n for n in names if NETNS_RE.match(n)]


def netns_pids(ns: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _kill_all(procs: list[tuple[int, int | None]]) -> None:
    """SIGTERM each live (pid, start), wait a little, then SIGKILL the rest."""
    live = [(p, s) for p, s in procs if proc_alive(p, s)]
    for pid, _ in live:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _KILL_GRACE_S
    while live and time.monotonic() < deadline:
        live = [(p, s) for p, s in live if proc_alive(p, s)]
        time.sleep(0.02)
    for pid, start in live:
        if proc_alive(pid, start):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _KILL_GRACE_S
    while any(proc_alive(p, s) for p, s in live) and time.monotonic() < deadline:
        time.sleep(0.02)


def _zombie(pid: int) -> bool:
    """A dead child its parent has not collected yet counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def teardown_namespace(ns: str) -> str:
    """Kill what runs in ``ns``, delete it; returns a problem or ""."""
    if not NETNS_RE.match(ns):
        return f"refusing to delete {ns!r}: not a cronos namespace"
    _kill_all([(p, proc_start(p)) for p in netns_pids(ns)])
    res = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
    return f"ip netns del {ns}: {res.stderr.strip()}" if res.returncode else ""


def teardown(rec: LabRecord) -> list[str]:
    """Remove everything ``rec`` lists; returns the problems met (never raises)."""
    _kill_all([(e["pid"], e.get("start")) for e in rec.pids])
    present = set(list_netns())
    # reversed: a router namespace goes after the server behind it
    results = [teardown_namespace(ns) for ns in reversed(rec.namespaces) if ns in present]
    problems = [r for r in results if r]
    for f in rec.files:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(f)
    if not problems:
        with contextlib.suppress(FileNotFoundError):
            rec.path.unlink()
    return problems
