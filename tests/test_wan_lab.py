"""The lab behind a modest WAN path: every profile is still named.

The lab's six kernel profiles behind 60 ms of delay, 40 ms of jitter (both
directions) and 3 % loss, scanned as a user would (``-m slf --tries 2
--timeout 20``, early stop on): the issue #13 case, where the old matcher
named none of them. The impairment is seeded; the stacks' own timers and the
machine's load are not, so the test asserts verdicts, not times.

A profile counts as named by its measured block, or by the Linux law's block
reading its settings (``helpers.reads_settings``). One confusion is allowed,
and only that one: behind this path linux-orphan2 and linux-rto20 time their
closing states alike (both tcp_orphan_retries=2; their rto_min, 200 and
20 ms, is hidden under an RTO of about 3 RTTs) and differ only by their
SYN-ACK count (1 and 2); in one CI run of eight the matcher weighed the
closing series' jitter (7.2 nats for rto20 over four series) above that count
(6.2 nats for orphan2). A known weakness of the matcher, not of the scan.

A second one: when one of synproxy's two SYN_RCVD tries got no SYN-ACK at
all (the 3 % loss took the SYN or the SYN-ACK: "filtered") and the other
stopped early after its first SYN-ACK, nothing measured tells the proxy from
the Linux server behind it, whose closing states it relays; a Linux block
may then come first (seen once in CI, 2026-12-03: "Linux 2.6.0 - 2.6.31").
"""

import pytest

from cronos.lab.impair import parse_impairment

from helpers import by_profile, read_verdicts, reads_settings, scan

pytestmark = pytest.mark.netns

LAB_PROFILES = ["linux-default", "linux-synack2", "linux-synack3", "linux-orphan2",
                "linux-rto20", "synproxy"]  # fmt: skip
LAB_IMPAIR = parse_impairment(delay="60ms", jitter="40ms", loss="3%", seed=13)


def test_every_profile_named_behind_a_wan_path(lab, tmp_path):
    ips = {by_profile(lab, p).ip: p for p in LAB_PROFILES}
    out = tmp_path / "wan.jsonl"
    _, recs = scan(lab, list(ips), out, "--tries", "2", methods="slf", timeout=20, full=False,
                   timeout_s=600)  # fmt: skip
    verdicts = read_verdicts(out)
    named, verdict = {}, {}
    for ip, profile in ips.items():
        v = verdicts[ip]
        named[profile] = v["candidates"][0]["name"] if v["candidates"] else "no match"
        # a family's settings as the verdict reads them: every tied setting
        # (a count cut short by the end of listening reads as a range)
        verdict[profile] = v.get("verdict") or "no match"
    twins = {"linux-orphan2": "linux-rto20", "linux-rto20": "linux-orphan2"}
    # synproxy's own state is SYN_RCVD (its cookie SYN-ACK, never repeated);
    # its closing states are the Linux server's behind it
    proxy_ip = by_profile(lab, "synproxy").ip
    syn_lost = any(r.get("target") == proxy_ip and r.get("state") == "SYN_RCVD"
                   and r.get("status") != "ok" for r in recs)  # fmt: skip
    wrong = {
        p: verdict[p]
        for p, n in named.items()
        if verdict[p] == "no match"
        or (
            f"[lab {p}]" not in n
            and not reads_settings(verdict[p], p)
            and not (p in twins and f"[lab {twins[p]}]" in n)
            and not (p == "synproxy" and syn_lost and n.startswith("Linux"))
        )
    }
    lines = [f"{r['target']} {r['state']} try {r.get('try')} {r.get('status')}: "
             f"{r.get('fingerprint')} {r.get('note', '')}"
             for r in recs if "state" in r and ips.get(r["target"]) in wrong]  # fmt: skip
    print("\n".join(lines))  # shown with the failure, in full
    assert not wrong, wrong
