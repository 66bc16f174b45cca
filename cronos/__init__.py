"""Cron-OS: tell a remote TCP/IP stack by timing its retransmissions."""

__version__ = "0.1.0"
