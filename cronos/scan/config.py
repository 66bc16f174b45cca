"""What a scan is asked to do, typed and checked once (``cron-os scan``'s
options, or a caller of the library): ``ScanConfig`` and its ``ScanOutputs``.

Building one checks every value and raises ``UsageError`` with a one-line
message naming the option; nothing here touches the network or the disk
(``cronos.scan.session`` runs a checked configuration).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UsageError
from ..model import Method
from .targets import Order

DEFAULT_PAYLOAD = b"GET / HTTP/1.0\r\n\r\n"
MAX_HOSTS_WITHOUT_YES = 4096


@dataclass(frozen=True)
class ScanOutputs:
    """Where the results go (every path optional)."""

    json_out: str | None = None  # -oJ ('-' = stdout)
    parquet_out: str | None = None  # -oP: the same records, columnar (this run's)
    resume: str | None = None  # --resume: skip what this JSON Lines file holds, append to it
    xml_out: str | None = None  # -oX
    pcap_out: str | None = None  # -w
    plot_out: str | None = None  # --plot
    html_out: str | None = None  # -oH
    top: int = 5  # candidates shown and recorded
    quiet: bool = False  # no report on stdout
    progress: bool = True  # a progress line on a terminal
    command_line: str = ""  # recorded in -oX

    def __post_init__(self) -> None:
        if not 1 <= self.top <= 100:
            raise UsageError("--top must be between 1 and 100")
        if self.resume and self.json_out and self.json_out != self.resume:
            raise UsageError(
                "--resume FILE already appends to FILE: drop -oJ or give the same file"
            )
        for flag, path in (("-oX", self.xml_out), ("-w", self.pcap_out),
                           ("-oP", self.parquet_out)):  # fmt: skip
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise UsageError(f"{flag} {path}: directory does not exist")
        from ..render.html_report import check_outputs

        check_outputs(self.html_out, self.plot_out)

    @property
    def records(self) -> str | None:
        """The JSON Lines file measurements are appended to."""
        return self.resume or self.json_out

    @property
    def evidence(self) -> bool:
        return bool(self.html_out or self.plot_out)


@dataclass(frozen=True)
class ScanConfig:
    """The measurements to make and how."""

    targets: tuple[str, ...]  # addresses, names, CIDRs, ranges
    ports: tuple[int, ...] = (80,)
    methods: tuple[Method, ...] = (Method.SYN_RCVD,)
    tries: int = 1
    timeout_s: float = 60.0  # stop listening this long after the last packet
    window_s: float = 180.0  # never listen to one state longer
    payload: bytes = DEFAULT_PAYLOAD  # the FIN_WAIT1 request
    sack: bool = False
    early_stop: bool = True
    max_rate_pps: float = 300.0
    max_in_flight: int = 1024
    interface: str | None = None  # -e
    exclude: tuple[str, ...] = ()
    allow_special: bool = False
    allow_large: bool = False  # --yes
    family: int | None = None  # -4 / -6: one address family only (names: A or AAAA)
    #: --seed / --shard: the targets in a seeded pseudo-random order, this
    #: shard's share only (``cronos.scan.targets.Order``); None: as given
    order: Order | None = None
    db_files: tuple[str, ...] = ()  # --db, beside the built-in database
    nmap: bool = False
    outputs: ScanOutputs = field(default_factory=ScanOutputs)

    def __post_init__(self) -> None:
        if not self.targets:
            raise UsageError("no target given (cron-os scan TARGET... -p PORTS)")
        if not self.ports or not self.methods:
            raise UsageError("no port or no state to measure")
        if not self.timeout_s > 0:
            raise UsageError(f"--timeout must be > 0 seconds (got {self.timeout_s:g})")
        if not self.window_s > 0:
            raise UsageError(f"--window must be > 0 seconds (got {self.window_s:g})")
        if not 1 <= self.tries <= 100:
            raise UsageError(f"--tries must be between 1 and 100 (got {self.tries})")
        if not self.max_rate_pps > 0:
            raise UsageError("--max-rate must be > 0")
        if self.max_in_flight < 1:
            raise UsageError("--max-hosts must be >= 1")
        if self.family not in (None, 4, 6):
            raise UsageError(f"bad address family {self.family!r}: 4 or 6")
        if not 1 <= len(self.payload) <= 1400:
            raise UsageError("--payload must be 1 to 1400 bytes")

    @property
    def per_target(self) -> int:
        """Measurements per target."""
        return len(self.ports) * len(self.methods) * self.tries


def parse_payload(text: str | None) -> bytes:
    r"""``--payload`` with its ``\r`` and ``\n`` escapes."""
    if text is None:
        return DEFAULT_PAYLOAD
    return text.replace("\\r", "\r").replace("\\n", "\n").encode("utf-8")
