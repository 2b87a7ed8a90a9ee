"""dvc.yaml's deps cannot drift from the code: each stage must depend on exactly the project files
its script imports (directly or through other project modules, lazy imports included). The method
package is the one exception by design: a method's stages depend on the shared method files and
their own module (``methods.<id>.module``), not on every method the registry imports."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = "pipeline/methods"
SHARED_METHOD_FILES = {f"{METHODS}/__init__.py", f"{METHODS}/base.py", f"{METHODS}/registry.py"}


def _module_file(name: str) -> str | None:
    """pipeline.x.y -> its file (a module or a package's __init__.py), None if not the project's."""
    if not (name == "pipeline" or name.startswith("pipeline.") or name.startswith("stages.")):
        return None
    path = ROOT / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py").relative_to(ROOT).as_posix()
    if (path / "__init__.py").is_file():
        return (path / "__init__.py").relative_to(ROOT).as_posix()
    return None


def _imports(file: str) -> set[str]:
    tree = ast.parse((ROOT / file).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs on the way to its modules
                target = _module_file(".".join(parts[:i]))
                if target is not None:
                    found.add(target)
    return found


def _closure(script: str) -> set[str]:
    seen, todo = set(), [script]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        if file.startswith(f"{METHODS}/") and file not in SHARED_METHOD_FILES and "/blocks" not in file:
            continue  # a method module: its own imports are counted by its own stages
        if file == f"{METHODS}/__init__.py":
            todo += [f for f in SHARED_METHOD_FILES if f != file]
            continue  # the registry's import of every method module is the documented exception
        todo += sorted(_imports(file))
    return seen - {"pipeline/__init__.py"}


def _expanded(deps: list[str]) -> set[str]:
    files = set()
    for dep in deps:
        path = ROOT / dep
        if path.is_dir():
            files |= {p.relative_to(ROOT).as_posix() for p in path.rglob("*.py")}
        elif dep.endswith(".py"):
            files.add(dep)
    return files


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        deps = [d for d in body["deps"] if not d.startswith("${paths.")]
        if "foreach" in stage:  # one representative item, its ${item.module} resolved
            first = next(iter(params["methods"].values())) if stage["foreach"] == "${methods}" else {"module": "physfit"}
            deps = [d.replace("${item.module}", first.get("module", "")) for d in deps]
            module = first.get("module", "")
        else:
            module = None
        script = body["cmd"].split("-m stages.")[1].split()[0]
        out[name] = {"deps": deps, "script": f"stages/{script}.py", "module": module}
    return out


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_deps_are_exactly_the_files_the_stage_imports(name):
    stage = _stages()[name]
    needed = {f for f in _closure(stage["script"]) if not (f.startswith(f"{METHODS}/")
                                                           and f not in SHARED_METHOD_FILES and "/blocks" not in f)}
    declared = {f for f in _expanded(stage["deps"]) if not (f.startswith(f"{METHODS}/") and f not in
                                                           SHARED_METHOD_FILES and "/blocks" not in f)}
    if METHODS in stage["deps"]:  # a stage over every method (tables: labels and families) lists the package
        needed = {f for f in needed if not f.startswith(f"{METHODS}/")}
        declared = {f for f in declared if not f.startswith(f"{METHODS}/")}
    missing, extra = sorted(needed - declared), sorted(declared - needed)
    assert not missing, f"dvc.yaml stage {name} imports but does not depend on {missing}"
    assert not extra, f"dvc.yaml stage {name} depends on {extra} but does not import them"


def test_the_deps_test_would_catch_a_missing_import():
    stage = _stages()["train"]
    assert "pipeline/training.py" in _closure(stage["script"])
    assert "pipeline/training.py" in _expanded(stage["deps"])
