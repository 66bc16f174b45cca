"""The tree and the README's picture of it agree, and imports follow the flow
capture -> probes -> scan core -> verdict -> renderers (README, "How it works")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cronos"


def _tree_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How it works") :]
    return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def _imports(path: Path) -> set[tuple[str, str]]:
    """(module, name) pairs imported by ``path``, relative imports resolved."""
    mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    pkg = pkg.removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out |= {(target, a.name) for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {(a.name, "") for a in node.names}
    return out


def _group_imports(group: str) -> dict[str, set[tuple[str, str]]]:
    return {str(p.relative_to(ROOT)): _imports(p) for p in (PKG / group).glob("*.py")}


def test_the_readme_tree_names_every_package_and_top_level_module():
    block = _tree_block()
    listed = set(re.findall(r"^  (\w+)/", block, re.M))
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert listed == packages | {"data"}
    top = {p.stem for p in PKG.glob("*.py") if not p.stem.startswith("__")}
    assert top == {m for m in top if f"{m}.py" in block}, "a top-level module is not in the README"
    for name in re.findall(r"\b(\w+)\.py\b", block):  # every file it names exists
        assert list(PKG.rglob(f"{name}.py")), name
    for group in ("scan", "analysis", "render"):
        line_block = block[block.index(f"  {group}/") :]
        line_block = line_block[: re.search(r"\n  \w+/", line_block[3:]).start() + 3]
        for p in (PKG / group).glob("*.py"):
            if p.stem != "__init__":
                assert p.stem in line_block, f"{group}/{p.name} is not in the README tree"


def test_probes_import_only_the_vocabulary():
    allowed = {"cronos.model", "cronos.packet", "cronos.errors"}
    for f, imps in _group_imports("probes").items():
        for mod, _ in imps:
            if mod.startswith("cronos"):
                assert mod in allowed or mod.startswith("cronos.probes"), (f, mod)


def test_the_scan_core_does_no_io():
    for name in ("core", "sim", "passive"):
        imps = _imports(PKG / "scan" / f"{name}.py")
        mods = {m for m, _ in imps}
        assert not mods & {"socket", "selectors", "subprocess", "time", "os"}, (name, mods)
        assert not any(m.startswith("cronos.net") for m in mods), (name, mods)


def test_analysis_imports_no_renderer_and_no_network_io():
    for f, imps in _group_imports("analysis").items():
        for mod, _ in imps:
            assert not mod.startswith("cronos.render"), (f, mod)
            assert not mod.startswith("cronos.net") or mod == "cronos.net.nmap", (f, mod)


def test_renderers_never_match_again():
    deciders = {
        ("cronos.analysis.match", "match"),
        ("cronos.analysis.verdict", "decide"),
        ("cronos.analysis.db", "load_db"),
        ("cronos.analysis.calibrate", "calibrate"),
    }
    for f, imps in _group_imports("render").items():
        assert not imps & deciders, (f, imps & deciders)
        assert not any(m.startswith("cronos.net") and m != "cronos.net.nmap" for m, _ in imps), f


def test_nothing_below_the_cli_reads_the_command_line():
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG)
        if rel.parts[0] in ("cli", "lab") or p.name == "__main__.py":
            continue  # lab helpers are programs of their own (python -m cronos.lab.X)
        mods = {m for m, _ in _imports(p)}
        assert "argparse" not in mods, rel
