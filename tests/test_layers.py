"""The ebmrl package's declared layers (``ebmrl.LAYERS``) hold: no module imports from a
higher layer or from a sibling unit of its own layer, and every unit has a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import ebmrl

PACKAGE = Path(ebmrl.__file__).parent


def unit_of(module: str) -> str | None:
    """The layer unit of a dotted ``ebmrl`` module name (``ebmrl.eval.judge`` -> ``eval``)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "ebmrl" and len(parts) > 1 else None


def imported_modules(path: Path) -> set[str]:
    """Every ``ebmrl`` module a file imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from ebmrl import tags` imports the unit `tags`, not the package root
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("ebmrl.")}


def layer_violations(layers: tuple[tuple[str, ...], ...], package: Path) -> list[str]:
    rank = {unit: i for i, layer in enumerate(layers) for unit in layer}
    problems = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        importer = unit_of(".".join(relative.parts))
        if importer is None:  # ebmrl/__init__.py
            continue
        for module in sorted(imported_modules(path)):
            imported = unit_of(module)
            if imported is None or imported == importer:
                continue
            if imported not in rank:  # `from ebmrl import __version__` and the like
                if (package / imported).exists() or (package / f"{imported}.py").exists():
                    problems.append(f"{relative}: {imported} has no layer")
                continue
            if rank[imported] >= rank[importer]:
                problems.append(
                    f"{relative} (layer {rank[importer]}, {importer}) imports {module} "
                    f"(layer {rank[imported]}, {imported})"
                )
    return problems


def test_every_unit_of_the_package_has_a_layer():
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    units |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    declared = [unit for layer in ebmrl.LAYERS for unit in layer]
    assert len(declared) == len(set(declared)), "a unit is declared twice"
    assert units == set(declared), (units - set(declared), set(declared) - units)


def test_no_module_imports_a_higher_layer_or_a_sibling():
    assert layer_violations(ebmrl.LAYERS, PACKAGE) == []


def test_the_check_catches_an_upward_import(tmp_path):
    package = tmp_path / "ebmrl"
    (package / "eval").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "eval" / "__init__.py").write_text("")
    (package / "tags.py").write_text("def parse():\n    from ebmrl.eval import judge\n")
    (package / "eval" / "judge.py").write_text("from ebmrl.tags import parse\n")
    problems = layer_violations((("tags",), ("eval",)), package)
    assert problems == ["ebmrl/tags (layer 0, tags) imports ebmrl.eval.judge (layer 1, eval)"]
    assert layer_violations((("tags", "eval"),), package) != []  # siblings, too


def test_no_two_modules_share_a_name_for_different_jobs():
    """A stage entry point may share its name with the core module it runs
    (``stages/grpo.py`` runs ``train/grpo.py``); no other two modules share a name."""
    stages = {p.stem for p in (PACKAGE / "stages").glob("*.py")}
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.stem != "__init__" and path.parent.name != "stages":
            seen.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert shared == {}, shared
    assert "config" not in {p.stem for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}
    assert stages  # the stage entry points are where the rule is relaxed


def test_a_renamed_module_keeps_its_public_name():
    """``ebmrl.train.configs`` became ``trl_args``; its ``grpo_args`` is a public contract."""
    import inspect

    from ebmrl.train.configs import grpo_args

    from ebmrl.train import trl_args

    assert grpo_args is trl_args.grpo_args
    assert list(inspect.signature(grpo_args).parameters) == [
        "section",
        "models",
        "output_dir",
        "report_to",
        "reward_args",
    ]
