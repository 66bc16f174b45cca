"""A Dask cluster on this machine for the lab: Dask's scheduler on loopback
and ``cron-os worker`` processes (each scanning from a namespace, or from
here), stopped by ``close`` (tests/test_cluster_lab.py, bench/cluster.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import LabError

START_S = 30.0


class LocalCluster:
    """``tmp``: a directory of the caller's that holds the scheduler's file,
    its scratch space and every process's log."""

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.procs: dict[str, subprocess.Popen] = {}
        sched_file = self.tmp / "scheduler.json"
        self._spawn("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler",
                                  "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(sched_file)],
                    env={**os.environ, "DASK_TEMPORARY_DIRECTORY": str(self.tmp)})  # fmt: skip
        self._wait("scheduler", sched_file.exists)
        self.address = json.loads(sched_file.read_text())["address"]

    def _spawn(self, name: str, argv: list[str], env=None) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("w") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=log, env=env)  # fmt: skip
        self.procs[name] = p
        return p

    def _wait(self, name: str, ready) -> None:
        p, deadline = self.procs[name], time.monotonic() + START_S
        while not ready():
            if p.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise LabError(f"{name} did not start: {self.log(name).strip()[-500:]}")
            time.sleep(0.1)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def worker(self, name: str, netns: str | None = None) -> subprocess.Popen:
        """A ``cron-os worker`` named ``name``, scanning from ``netns``; returns
        once it has joined the scheduler."""
        p = self._spawn(name, [sys.executable, "-m", "cronos", "worker", self.address,
                               "--name", name, *(["--netns", netns] if netns else [])])  # fmt: skip
        self._wait(name, lambda: "joined" in self.log(name))
        return p

    def close(self) -> None:
        """SIGTERM to every process (workers first), SIGKILL after 15 s."""
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
