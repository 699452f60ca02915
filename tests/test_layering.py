"""The layering of ../shared/design.md, enforced on every module of the package (issue 10).

core (diffrl/ minus diffrl/app/) imports none of diffrl.agents, diffrl.envs, diffrl.app;
agents and envs never import diffrl.app. The package namespace ``diffrl/__init__.py`` is the
public facade: it imports nothing at load time and resolves its names lazily (PEP 562).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"diffrl.agents": ROOT / "agents", "diffrl.envs": ROOT / "envs", "diffrl.app": ROOT / "diffrl" / "app"}


def module_name(path: Path) -> str:
    for package, folder in LAYERS.items():
        if folder in path.parents or path.parent == folder:
            rel = path.relative_to(folder).with_suffix("")
            return ".".join([package, *rel.parts]).removesuffix(".__init__")
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` (or ``source`` as if it were that file) imports,
    anywhere in the file, with relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def forbidden(name: str) -> tuple[str, ...]:
    if name.startswith("diffrl.app"):
        return ()
    if name.startswith(("diffrl.agents", "diffrl.envs")):
        return ("diffrl.app",)
    return ("diffrl.agents", "diffrl.envs", "diffrl.app")


def violations(files: list[Path], source: str | None = None) -> list[str]:
    out = []
    for path in files:
        name = module_name(path)
        if name == "diffrl":
            continue
        for imported in imports_of(path, source):
            bad = [f for f in forbidden(name) if imported == f or imported.startswith(f + ".")]
            if bad:
                out.append(f"{name} imports {imported}")
    return sorted(out)


def package_files() -> list[Path]:
    files = [*(ROOT / "diffrl").rglob("*.py"), *(ROOT / "agents").rglob("*.py"), *(ROOT / "envs").rglob("*.py")]
    assert len(files) > 30, "the walk must see the whole package"
    return files


def test_no_module_imports_a_layer_above_it() -> None:
    assert violations(package_files()) == []


@pytest.mark.parametrize(
    "where, line",
    [
        ("diffrl/dxmi.py", "from .app import pipeline"),
        ("diffrl/mdp.py", "import diffrl.agents.dxdp"),
        ("diffrl/sampling.py", "from diffrl.envs import DiffusionMDP"),
        ("agents/dxdp.py", "from diffrl.app.config import load_config"),
        ("envs/gym_env.py", "from ..app import cli"),
        ("diffrl/metrics.py", "    from .agents.dxdp import DxDP  # inside a function"),
    ],
)
def test_the_rule_fails_on_an_added_upward_import(where: str, line: str) -> None:
    """One upward import added to the text of a real module is caught (the test can fail)."""
    path = ROOT / where
    source = path.read_text()
    source = source + "\n\ndef _added():\n" + line + "\n" if line.startswith("    ") else line + "\n" + source
    assert violations([path]) == []
    assert violations([path], source), "the added import must be reported"


def test_importing_diffrl_loads_no_layer_above_the_core() -> None:
    import subprocess
    import sys

    code = "import sys, diffrl; diffrl.DxMI; print(sorted(m for m in sys.modules if m.startswith(('diffrl.app', 'diffrl.agents', 'diffrl.envs'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
