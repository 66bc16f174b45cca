"""A lab: real target TCP stacks in network namespaces, and their removal.

    with Lab.create(["linux-default", "synproxy"]) as lab:
        run_scan(netns=lab.scanner_ns, targets=[t.ip for t in lab.targets])

Everything lives in namespaces named ``cronos-<id>-<role>`` (``<id>``: 6
random hex characters); nothing is created in the root namespace. The lab's
state file (``cronos.lab.state``) lists every object before it exists, so
``destroy()``, ``Lab.load(id).destroy()`` and ``cleanup_stale()`` can remove
a lab on every exit path, including SIGKILL of its creator.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from ..errors import LabError, PrivilegeError
from . import profiles as _profiles
from . import state as _state
from .core import LabContext, LabTarget, require_tools

#: An unclaimed ``cronos-*`` namespace younger than this may be a lab being
#: created right now; leave it alone unless asked to remove everything.
ORPHAN_GRACE_S = 60.0


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError("the lab needs root (network namespaces, veth, sysctl)")


class RecordedLab:
    """What every lab kind shares: its state record, its removal (idempotent,
    also on ``with`` exit), its id and scanner namespace."""

    KIND = "lab"  # in error messages

    def __init__(self, record: _state.LabRecord, ctx: LabContext | None = None):
        self.record = record
        self._ctx = ctx  # only in the creating process
        self._destroyed = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def scanner_ns(self) -> str:
        return self.record.scanner_ns

    def destroy(self) -> None:
        """Remove everything; idempotent. ``LabError`` lists what could not go."""
        if self._destroyed:
            return
        problems = remove_everything(self._ctx, self.record)
        self._destroyed = True
        if problems:
            raise LabError(f"{self.KIND} {self.id}: incomplete removal: {'; '.join(problems)}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


class Lab(RecordedLab):
    """A running lab; build it with ``Lab.create`` or find it with ``Lab.load``."""

    # -- attributes -------------------------------------------------------------
    @property
    def persistent(self) -> bool:
        return self.record.persistent

    @property
    def targets(self) -> tuple[LabTarget, ...]:
        return tuple(LabTarget.from_json(t) for t in self.record.targets)

    def owner_alive(self) -> bool:
        return self.record.owner_alive()

    def servers_alive(self) -> dict[str, bool]:
        """For each recorded process namespace: is every process recorded there alive?"""
        alive: dict[str, bool] = {}
        for e in self.record.pids:
            ns = e.get("ns") or "-"
            alive[ns] = alive.get(ns, True) and _state.proc_alive(e["pid"], e.get("start"))
        return alive

    # -- lifecycle -------------------------------------------------------------
    @classmethod
    def create(cls, profiles: Sequence[str] = (), *, persistent: bool = False, impair=None) -> Lab:
        """Build a scanner namespace and one target per profile (in order).

        ``impair`` is passed, unchanged, to ``cronos.lab.impair.setup(ctx, ns,
        impair)`` for each target (``ns``: its router namespace, else its own).
        """
        require_root()
        chosen = [_profiles.get(n) for n in (profiles or _profiles.DEFAULT_PROFILES)]
        setups = [p.resolve() for p in chosen]  # fail before creating anything
        require_tools("ip", "ethtool", "sysctl", "ss")
        if any(p.kind == "synproxy" for p in chosen):
            require_tools("iptables")
        impair_mod = _impair_module() if impair is not None else None
        lab = cls(_state.LabRecord.new(_new_id(), [p.name for p in chosen], persistent))
        lab._ctx = ctx = LabContext(lab.record)
        try:
            ctx.new_netns("scan")
            for index, (profile, setup) in enumerate(zip(chosen, setups, strict=True), 1):
                ctx.profile = profile
                target = setup(ctx, index)
                lab.record.add("targets", target.to_json())
                if impair_mod is not None:
                    impair_mod.setup(ctx, target.gateway_ns or target.netns or ctx.scanner_ns,
                                     impair)  # fmt: skip
        except BaseException:
            with contextlib.suppress(LabError):
                lab.destroy()
            raise
        return lab

    @classmethod
    def load(cls, lab_id: str) -> Lab:
        return cls(_state.LabRecord.load(lab_id))

    @classmethod
    def list(cls) -> list[Lab]:
        labs = []
        for lab_id in _state.list_ids():
            with contextlib.suppress(LabError):  # vanished or half-written: skip
                labs.append(cls.load(lab_id))
        return labs

    def __repr__(self) -> str:
        return f"Lab(id={self.id!r}, targets={[t.profile for t in self.targets]})"


def remove_everything(ctx: LabContext | None, record) -> list[str]:
    """Run a lab's cleanups, tear down what its state file records, collect our
    children; the problems met (empty when everything went)."""
    errors = ctx.run_cleanups() if ctx else []
    problems = [str(e) for e in errors] + _state.teardown(record)
    if ctx:
        for proc in ctx.procs:  # collect our children
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
    return problems


def cleanup_stale(all_labs: bool = False) -> list[str]:
    """Remove abandoned labs; returns the lab ids and namespace names removed.

    A lab is abandoned when it is not persistent and its owner process (pid
    and start time) is gone; ``all_labs`` removes every lab. A ``cronos-*``
    namespace that no state file claims is removed when nothing runs in it and
    it is older than ``ORPHAN_GRACE_S`` (or always, with ``all_labs``).
    """
    require_root()
    removed: list[str] = []
    problems: list[str] = []
    for lab in Lab.list():
        if all_labs or (not lab.persistent and not lab.owner_alive()):
            try:
                lab.destroy()
                removed.append(lab.id)
            except LabError as exc:
                problems.append(str(exc))
    claimed = set(_state.list_ids())
    for ns in _orphans(_state.list_netns(), claimed, all_labs):
        problem = _state.teardown_namespace(ns)
        if problem:
            problems.append(problem)
        else:
            removed.append(ns)
    if problems:
        raise LabError("; ".join(problems))
    return removed


def _orphans(names: Iterable[str], claimed: set[str], everything: bool) -> list[str]:
    out = []
    for ns in names:
        if ns.split("-")[1] in claimed:
            continue
        if everything:
            out.append(ns)
            continue
        try:
            age = time.time() - Path("/run/netns", ns).stat().st_mtime
        except OSError:
            continue
        if age > ORPHAN_GRACE_S and not _state.netns_pids(ns):
            out.append(ns)
    return out


def _new_id() -> str:
    taken = set(_state.list_ids()) | {n.split("-")[1] for n in _state.list_netns()}
    while (lab_id := secrets.token_hex(3)) in taken:
        pass
    return lab_id


def _impair_module():
    try:
        mod = importlib.import_module("cronos.lab.impair")
    except ImportError as exc:
        raise LabError("impairment not available (cronos.lab.impair missing)") from exc
    if not callable(getattr(mod, "setup", None)):
        raise LabError("impairment not available (cronos.lab.impair has no setup)")
    return mod
