"""Every dvc.yaml stage depends on all the code its command runs, by construction.

For each stage, the ``ebmrl <command>`` it runs is resolved to its stage module
(``ebmrl.cli.STAGES``); from ``ebmrl/cli.py`` and that module every ``ebmrl`` import is
followed, transitively, including the imports inside functions (the stages import
lazily) and the packages' ``__init__.py`` files that an import runs. Package data a
module names (a prompt template by its name, a data file by its file name) counts as
code too. A file no dep covers fails the test, and so does an ``ebmrl/`` dep that covers
nothing the stage runs. Stages added later are checked the same way.
"""

from __future__ import annotations

import ast
import functools
import shlex
from pathlib import Path

import pytest
import yaml

from ebmrl.cli import STAGES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ebmrl"
NOT_CODE = {"py.typed"}  # a typing marker: changes nothing a stage computes


def module_file(name: str) -> Path | None:
    """The source file of ``ebmrl.x.y`` (a module or a package), None if there is none."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _nodes(tree: ast.AST):
    """Every node, except what sits under ``if TYPE_CHECKING:`` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(module: str, path: Path, tree: ast.AST) -> set[str]:
    """``ebmrl`` modules that ``module`` imports anywhere (module level or in functions)."""
    found: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = _package_of(module, path).split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            found.add(base)
            # ``from ebmrl.backends import local``: a submodule, imported as a name.
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] == "ebmrl" and module_file(m) is not None}


def _with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def data_files() -> dict[str, Path]:
    """Package data by the names code uses for it: prompt name (stem) and file name."""
    names: dict[str, Path] = {}
    for path in PACKAGE.rglob("*"):
        if not path.is_file() or path.suffix in (".py", ".pyc") or path.name in NOT_CODE:
            continue
        if "__pycache__" in path.parts:
            continue
        names[path.name] = path
        names[path.stem] = path
    return names


MIN_PREFIX = 4  # an f-string's literal head this long names the files it starts


def named_data(tree: ast.AST, data: dict[str, Path]) -> set[Path]:
    """Data files a module names: a string equal to one's name, or an f-string whose
    literal head (``f"judge_rubric_{key}"``) begins some names."""
    found = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in data:
            found.add(data[node.value])
        elif isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            if (
                isinstance(head, ast.Constant)
                and isinstance(head.value, str)
                and len(head.value) >= MIN_PREFIX
            ):
                found |= {p for n, p in data.items() if n.startswith(head.value)}
    return found


@functools.cache
def parsed(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def code_closure(roots: list[str]) -> set[Path]:
    """Every ``ebmrl`` file that running ``roots`` may execute or read."""
    data = data_files()
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [m for root in roots for m in _with_parents(root)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            continue
        files.add(path)
        tree = parsed(path)
        files |= named_data(tree, data)
        for imported in imported_modules(module, path, tree):
            todo += [m for m in _with_parents(imported) if m not in seen]
    return files


def stage_roots(cmd: str) -> list[str]:
    """``ebmrl <command> ...`` -> the CLI module and the command's stage module."""
    words = shlex.split(cmd)
    assert words[0] == "ebmrl", f"not an ebmrl command: {cmd!r}"
    command = next(w for w in words[1:] if not w.startswith("-"))
    roots = ["ebmrl.cli"]
    if command in STAGES:
        roots.append(f"ebmrl.stages.{STAGES[command]}")
    else:
        assert command == "check-params", f"unknown ebmrl command {command!r} in {cmd!r}"
    return roots


def dep_paths(stage: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]


def covers(dep: str, path: Path) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return relative == dep.rstrip("/") or relative.startswith(dep.rstrip("/") + "/")


STAGE_DEFS = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def outputs(stages: dict) -> set[str]:
    return {
        next(iter(o)) if isinstance(o, dict) else o
        for stage in stages.values()
        for kind in ("outs", "metrics", "plots")
        for o in stage.get(kind, []) or []
    }


@pytest.mark.parametrize("name", sorted(STAGE_DEFS))
def test_the_stage_depends_on_every_file_its_command_runs(name):
    stage = STAGE_DEFS[name]
    needed = code_closure(stage_roots(stage["cmd"]))
    deps = dep_paths(stage)
    missing = sorted(
        p.relative_to(REPO).as_posix() for p in needed if not any(covers(d, p) for d in deps)
    )
    assert not missing, f"stage {name!r} runs code no dep covers: add to dvc.yaml {missing}"
    produced = outputs(STAGE_DEFS)
    for dep in deps:
        made = any(dep == o or dep.startswith(o.rstrip("/") + "/") for o in produced)
        assert made or (REPO / dep).exists(), f"stage {name!r}: dep {dep} does not exist"
    unused = [d for d in deps if d.startswith("ebmrl/") and not any(covers(d, p) for p in needed)]
    assert not unused, f"stage {name!r} depends on code it never runs: {unused}"


def test_the_walk_follows_lazy_imports_packages_and_prompts():
    """The walker itself: a lazy import in a function, the package ``__init__`` it runs,
    and a prompt named as a string are all found (the evaluate stage has each)."""
    files = {p.relative_to(REPO).as_posix() for p in code_closure(["ebmrl.stages.evaluate"])}
    assert "ebmrl/eval/judge.py" in files  # imported inside run()
    assert "ebmrl/eval/__init__.py" in files and "ebmrl/__init__.py" in files
    assert "ebmrl/prompts/judge_rubric_veg.txt" in files  # named by judge.TEMPLATES
    assert "ebmrl/prompts/annotate_user.txt" not in files  # annotate's, not evaluate's
