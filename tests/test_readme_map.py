"""The README is a map that stays true: every folder and module group is in its table,
every path it names exists, every `ebmrl <command> --option` it shows exists, and no
docstring cites a file that is not in the repository."""

import ast
import re
import subprocess
from pathlib import Path

from ebmrl import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
# Top-level files that are not worth a row (tooling every Python project has).
UNMAPPED = {"LICENSE", "Makefile", "README.md", "pyproject.toml", "constraints.txt"}
# Folders whose paths name pipeline outputs, not files of the repository.
OUTPUTS = ("data/", "models/", "metrics/", "reports/", "mlflow")


def table() -> str:
    start = README.index("| path | what |")
    return README[start : README.index("\n\n", start)]


def table_paths() -> set[str]:
    first_cells = [line.split("|")[1] for line in table().splitlines()[2:]]
    return {p for cell in first_cells for p in re.findall(r"`([^`]+)`", cell)}


def covered(path: str, mapped: set[str]) -> bool:
    return path in mapped or f"{path}/" in mapped


def test_every_folder_and_module_group_has_a_row():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    top = {p.split("/")[0] for p in tracked if not p.startswith(".")} - UNMAPPED
    mapped = table_paths()
    missing = [p for p in sorted(top) if not covered(p, mapped)]
    package = REPO / "ebmrl"
    groups = [
        f"ebmrl/{p.name}"
        for p in sorted(package.iterdir())
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name != "__init__.py")
    ]
    missing += [g for g in groups if not covered(g, mapped)]
    assert not missing, f"README's table has no row for {missing}"


def test_every_path_in_the_table_exists():
    absent = [
        p
        for p in sorted(table_paths())
        if "/" in p or "." in p
        if not p.startswith(OUTPUTS) and not (REPO / p).exists()
    ]
    assert not absent, absent


def test_every_command_line_option_the_readme_shows_exists():
    parser, _ = cli._build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    wrong = []
    for span in re.findall(r"`(ebmrl [^`]+)`", README):
        words = span.split()
        command = commands.get(words[1]) if len(words) > 1 else None
        if command is None:
            if words[1:2] and not words[1].startswith(("<", "-")):
                wrong.append(f"{span}: no command {words[1]!r}")
            continue
        options = {o for a in command._actions for o in a.option_strings}
        for word in words[2:]:
            flag = word.split("=")[0]
            if flag.startswith("--") and flag not in options:
                wrong.append(f"{span}: {words[1]} has no {flag}")
    assert not wrong, "\n".join(wrong)


# A path into the repository; patterns (``judge_*.txt``, ``<name>.yaml``) are skipped.
CITED = re.compile(
    r"(?<![\w/.])((?:ebmrl|flows|tests|bench|profiles|deploy|configs)/[\w./*<>-]*[\w*>])"
)


def docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node)
            if text:
                yield text


def test_no_docstring_cites_a_file_that_is_not_in_the_repository():
    absent = []
    for path in sorted([*(REPO / "ebmrl").rglob("*.py"), *(REPO / "flows").rglob("*.py")]):
        for text in docstrings(path):
            for cited in CITED.findall(text):
                target = cited.rstrip(".")
                if "<" in target or "*" in target:
                    continue
                if not (REPO / target).exists():
                    absent.append(f"{path.relative_to(REPO)} cites {target}")
    assert not absent, "\n".join(absent)


def test_the_check_fails_on_a_cited_file_that_is_gone():
    assert CITED.findall("see ``ebmrl/no_such_module.py`` and flows/pipeline.py.") == [
        "ebmrl/no_such_module.py",
        "flows/pipeline.py",
    ]
