"""The layers and what each may import (README, "Architecture"):

    main.py -> stacks/ -> modules/ -> core/         comfyui_eks/ -> core/, stacks/ (synthesis)
    lambda_src/<function>/  nothing of the project (each is packaged alone)
    modules/pod/*.py         only the sibling modules shipped next to them in the pod

A module that imports upwards (core from modules, modules from stacks...) makes the layers a
tangle; this test names the offending import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PROJECT_PACKAGES = {"core", "modules", "stacks", "comfyui_eks", "lambda_src", "tests", "main"}
ALLOWED = {
    "core": {"core"},
    "modules": {"core", "modules"},
    "stacks": {"core", "modules", "stacks"},
    "comfyui_eks": {"core", "stacks", "comfyui_eks"},
    "lambda_src": set(),
    "main": {"core", "stacks"},
}
# Programs shipped into the pod import their siblings by file name.
POD_SIBLINGS = {"contract", "comfy_client"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _files():
    for layer in ("core", "modules", "stacks", "comfyui_eks", "lambda_src"):
        for path in sorted((REPO / layer).rglob("*.py")):
            yield pytest.param(layer, path, id=str(path.relative_to(REPO)))
    yield pytest.param("main", REPO / "main.py", id="main.py")


@pytest.mark.parametrize(("layer", "path"), list(_files()))
def test_imports_follow_the_layers(layer, path):
    pod_program = path.parent == REPO / "modules" / "pod"
    bad = []
    for line, name in _imports(path):
        top = name.split(".")[0]
        if pod_program:
            if top in PROJECT_PACKAGES or (top not in POD_SIBLINGS and (REPO / f"{top}.py").exists()):
                bad.append(f"line {line}: {name}")
            continue
        if top in PROJECT_PACKAGES and top not in ALLOWED[layer]:
            bad.append(f"line {line}: {name}")
    assert not bad, f"{path.relative_to(REPO)} imports across the layers: {bad}"


def test_the_lambda_packages_import_only_themselves():
    for package in (REPO / "lambda_src").iterdir():
        if not package.is_dir():
            continue
        siblings = {p.stem for p in package.glob("*.py")}
        for path in package.glob("*.py"):
            for line, name in _imports(path):
                top = name.split(".")[0]
                assert top not in PROJECT_PACKAGES - {"lambda_src"} or top in siblings, (
                    f"{path.name}:{line} imports {name}"
                )
