"""Renderers of finished verdicts (they never match again): the terminal
report (``report``, ``verdict_text``), JSON Lines (``output``), nmap XML
(``nmapxml``), plots (``plot``), the HTML report (``html_report``), and the
scan's host reporter (``reporter``), which turns finished hosts into all of
them in the order they finished."""
