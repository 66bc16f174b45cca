"""Cron-OS error hierarchy.

Every error the tool raises on purpose derives from ``CronosError``; the CLI
maps each to a one-line message and an exit code, never a traceback.
Low-level errors (``OSError``, ``subprocess.CalledProcessError``, ...) are
converted at the boundary with ``raise XError(...) from exc``.

    CronosError                      exit 2 unless said otherwise
    ├── UsageError                   bad targets, ports, options
    ├── PrivilegeError               not root / missing capability
    ├── DependencyError              a needed program (nft, ip, nmap) is missing
    ├── DatabaseError                signature file: syntax, duplicates
    ├── FingerprintSyntaxError       a ``CronOS_*(...)`` line that does not parse
    ├── ProbeStateError              a probe was driven through an illegal transition
    ├── NetError                     sockets, capture, interfaces
    │   └── FirewallError            nftables table could not be installed/removed
    └── LabError                     lab namespaces, servers, profiles
"""

from __future__ import annotations


class CronosError(Exception):
    """Base of every error Cron-OS raises on purpose."""

    exit_code = 2


class UsageError(CronosError):
    """Bad command-line input: targets, ports, options."""


class PrivilegeError(CronosError):
    """The operation needs root (CAP_NET_RAW / CAP_NET_ADMIN)."""


class DependencyError(CronosError):
    """An external program the operation needs is missing or failed."""


class DatabaseError(CronosError):
    """A signature database file is malformed; message is ``file:line: reason``."""


class FingerprintSyntaxError(CronosError):
    """A fingerprint line (``CronOS_Syn(...)`` etc.) does not parse."""


class ProbeStateError(CronosError):
    """A probe state machine received an event that is illegal in its state."""


class NetError(CronosError):
    """Raw sockets, capture or interface problems."""


class FirewallError(NetError):
    """The tool's nftables table could not be installed or removed."""


class LabError(CronosError):
    """Lab namespaces, interfaces, servers or profiles."""
