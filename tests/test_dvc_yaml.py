"""dvc.yaml declares what each stage reads, so DVC reruns a stage exactly when its inputs change."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _module_file(module: str) -> Path | None:
    for candidate in (REPO / f"{module.replace('.', '/')}.py", REPO / module.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] == "dithead"}


def library_closure(script: Path) -> set[str]:
    """Every project file ``script`` imports, directly or through other project modules."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [f for f in map(_module_file, _imported_modules(path)) if f is not None]
    return {str(p.relative_to(REPO)) for p in seen}


def _script(stage: dict) -> Path:
    return REPO / re.search(r"stages/\w+\.py", stage["cmd"]).group(0)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_depends_on_all_code_it_imports(name):
    deps = [str(d) for d in STAGES[name]["deps"]]
    covered = lambda f: any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
    missing = sorted(f for f in library_closure(_script(STAGES[name])) if not covered(f))
    assert not missing, f"{name}: add to deps in dvc.yaml: {missing}"


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_params_exist(name):
    for key in STAGES[name].get("params", []):
        node = PARAMS
        for part in str(key).split("."):
            assert isinstance(node, dict) and part in node, f"{name}: params key {key} is not in params.yaml"
            node = node[part]
