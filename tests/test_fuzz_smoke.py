"""The fuzz targets of bench/fuzz.py on seeded random inputs (seconds, no atheris).

The long coverage-guided run is ``python bench/fuzz.py -runs=1000000``
(docs/hostile.md); this keeps the same targets and checks in ``make test``.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"
N = 20_000


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("cronos_bench_fuzz", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _inputs(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        yield rng.randbytes(rng.choice((8, 64, 256, 1024)))


def test_random_inputs_never_crash(fuzz):
    for i, data in enumerate(_inputs(20261127, N)):
        try:
            fuzz.one_input(data)
        except Exception as exc:  # report the input, as the fuzzer would
            raise AssertionError(f"input #{i} crashed: {data.hex()}") from exc


def test_both_targets_and_every_probe_are_reached(fuzz):
    kinds, methods = set(), set()
    for data in _inputs(7, 2000):
        d = fuzz.Data(data)
        if d.uint(1) % 4 == 0:
            kinds.add("parse")
            fuzz.fuzz_parse(d)
        else:
            drv = fuzz.Driver(d)
            obs = drv.run()
            fuzz.check_observation(obs, drv.probe)
            kinds.add("probe")
            methods.add((obs.method, obs.status))
    assert kinds == {"parse", "probe"}
    assert {m for m, _ in methods} == set(fuzz.METHODS)
    assert len({s for _, s in methods}) >= 4  # filtered, closed, ok, reset/no-close...


def test_the_ipv6_parser_target_parses_some_inputs(fuzz):
    from cronos.packet import parse_ip

    parsed = 0
    for i, data in enumerate(_inputs(61616, 5000)):
        d = fuzz.Data(data)
        try:
            fuzz.fuzz_parse6(d)
        except Exception as exc:
            raise AssertionError(f"input #{i} crashed: {data.hex()}") from exc
        d = fuzz.Data(data)
        if d.bool():
            seg = parse_ip(fuzz.structured_packet6(d))
            parsed += seg is not None and seg.v6
    assert parsed > 100  # the structured packets get past the headers
