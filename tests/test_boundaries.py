"""The core takes the narrowest params section it needs: no function outside the entry
points (``ebmrl/stages``, ``ebmrl/cli.py``) and the settings table (``ebmrl/fidelity.py``)
takes the whole ``Params`` or imports it."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import ebmrl

PACKAGE = Path(ebmrl.__file__).parent
# Who may see the whole config: where it is defined, the entry points, the settings table.
ALLOWED = ("config.py", "cli.py", "fidelity.py", "stages/")


def _names(node: ast.AST | None) -> set[str]:
    """Every name an annotation mentions (``Params``, ``config.Params``, ``"Params"``)."""
    found: set[str] = set()
    for sub in ast.walk(node) if node is not None else ():
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            with contextlib.suppress(SyntaxError):  # a string that is not an annotation
                found |= _names(ast.parse(sub.value, mode="eval"))
    return found


def whole_params_uses(source: str, where: str) -> list[str]:
    """Where ``source`` imports ``Params`` or annotates a parameter with it, by line."""
    problems: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "ebmrl.config":
            if any(alias.name == "Params" for alias in node.names):
                problems.append((node.lineno, "imports Params"))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            for arg in every:
                if arg is not None and "Params" in _names(arg.annotation):
                    name = getattr(node, "name", "<lambda>")
                    problems.append((node.lineno, f"{name}({arg.arg}: Params)"))
    return [f"{where}:{line}: {what}" for line, what in sorted(problems)]


def test_no_core_function_takes_the_whole_params():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(ALLOWED):
            continue
        problems += whole_params_uses(path.read_text(encoding="utf-8"), relative)
    assert problems == []


def test_the_check_catches_a_function_taking_params():
    source = (
        "from ebmrl.config import GrpoSection, Params\n"
        "from ebmrl import config\n"
        "def narrow(section: GrpoSection) -> None: ...\n"
        "def whole(params: Params) -> None: ...\n"
        "class Trainer:\n"
        "    def __init__(self, *, settings: config.Params | None = None): ...\n"
        "def quoted(p: 'Params'): ...\n"
    )
    assert whole_params_uses(source, "x.py") == [
        "x.py:1: imports Params",
        "x.py:4: whole(params: Params)",
        "x.py:6: __init__(settings: Params)",
        "x.py:7: quoted(p: Params)",
    ]
    assert whole_params_uses("def narrow(section: GrpoSection): ...\n", "y.py") == []


def test_the_entry_points_are_where_params_is_seen():
    # The allowance is not empty: the stages really do take Params (and are skipped).
    stage = (PACKAGE / "stages" / "grpo.py").read_text(encoding="utf-8")
    assert whole_params_uses(stage, "stages/grpo.py") != []
