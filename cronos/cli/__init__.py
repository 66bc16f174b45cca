"""Thin command line: parse, call the library, render.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed args and
returning an exit code). Modules are listed once, here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from .. import __version__, interrupts
from ..errors import CronosError

SUBCOMMANDS = [
    "scan_cmd",
    "lab_cmd",
    "classify_cmd",
    "learn_cmd",
    "cleanup_cmd",
    "demo_cmd",
    "plot_cmd",
    "db_cmd",
    "worker_cmd",
]


class Terminated(BaseException):
    """Raised from SIGTERM/SIGHUP so that every ``finally`` runs (cleanup)."""


_received = interrupts.received  # the signals this process was sent, as raised


def _on_signal(signum, _frame):
    exc = Terminated(signal.Signals(signum).name)
    _received.append(exc)
    raise exc


def _on_sigint(_signum, _frame):
    exc = KeyboardInterrupt()
    _received.append(exc)
    raise exc


def _unraisable(hook):
    """``sys.unraisablehook`` that keeps quiet about our own signals: raised in
    a callback Python cannot propagate from (importlib's module-lock weakref,
    a ``__del__``), it is only printed ("Exception ignored in ...", a
    traceback) and lost; ``_received`` has it, and ``main`` acts on it."""

    def unraisable(u):
        if isinstance(u.exc_value, KeyboardInterrupt | Terminated) and u.exc_value in _received:
            return
        hook(u)

    return unraisable


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as every other bad input
        self.exit(2, f"cron-os: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="cron-os",
        description="Cron-OS: tell a remote TCP/IP stack by timing its retransmissions "
        "(SYN_RCVD, LAST_ACK, FIN_WAIT1).",
    )
    p.add_argument("--version", action="version", version=f"cron-os {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(name):
                continue  # not built yet
            raise
        mod.register(sub)
    return p


def _interruption(exc: BaseException) -> BaseException | None:
    """The signal behind ``exc``, if one came. numpy, for one, turns a signal
    that arrives while it is imported into an ImportError, and the chain of
    causes does not always lead back to it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt | Terminated):
            return exc
        exc = exc.__cause__ or exc.__context__
    return _received[0] if _received else None


def _interrupted(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        print("cron-os: interrupted", file=sys.stderr)
        return 130
    print(f"cron-os: terminated by {exc}", file=sys.stderr)
    return 143


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)  # not when started with SIGINT ignored
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    try:  # a signal while the subcommands are imported is an interruption too
        parser = build_parser()
        args = parser.parse_args(argv)
        if _received:  # raised where it could not propagate (see _unraisable)
            return _interrupted(_received[0])
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        code = int(args.func(args) or 0)
        return _interrupted(_received[0]) if _received else code
    except CronosError as exc:
        signalled = _interruption(exc)
        if signalled is not None:  # an error made by the interruption itself
            return _interrupted(signalled)
        print(f"cron-os: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line (CRONOS_DEBUG=1 shows the traceback)
        signalled = _interruption(exc)
        if signalled is not None:  # a library re-raised our signal as its own error
            return _interrupted(signalled)
        if os.environ.get("CRONOS_DEBUG"):
            raise
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        loc = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
        print(
            f"cron-os: internal error: {type(exc).__name__}: {exc}{loc} "
            "(please report it; CRONOS_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
