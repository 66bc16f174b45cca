"""From observations to a verdict: the reference database (``db``), the
matcher (``match``, its C inner loop ``_kernel.c``, and ``calibrate`` for a
batch), early verdicts during a scan (``early``), the architecture verdict
(``architecture``, ``merged`` with nmap's view), the one place that decides a
target (``verdict``), offline classification of recorded inputs
(``classify``) and new signatures from measurements (``learn``)."""
