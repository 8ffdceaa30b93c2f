"""The repository's own promises: lint clean, CI runs the README's command, a clean core.

(The DAG itself runs end to end in tests/test_dag.py and tests/test_flows_e2e.py.)"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_clean():
    result = subprocess.run([str(BIN / "ruff"), "check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


EDGE_MODULES = (
    "ebmrl/stages/",
    "ebmrl/cli.py",
    "ebmrl/edge/tracking.py",
    "ebmrl/edge/http_server.py",
)
ORCHESTRATION = {"prefect", "dvc", "mlflow", "flows"}


def test_core_package_imports_no_orchestration_framework():
    """The core imports no Prefect, DVC or MLflow; only the edges (stages, CLI, tracking) may.

    (Libraries the core uses may import MLflow themselves, as TRL does; the rule is about
    our own code's dependencies.)
    """
    import ast

    offenders = []
    for path in sorted((REPO / "ebmrl").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(EDGE_MODULES):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ORCHESTRATION:
                    offenders.append(f"{relative}:{node.lineno} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_importing_the_data_and_reward_core_loads_no_orchestration_framework():
    code = (
        "import sys\n"
        "import ebmrl.schema, ebmrl.tags, ebmrl.video, ebmrl.config, ebmrl.frame_store\n"
        "import ebmrl.rewards.format, ebmrl.rewards.aggregate, ebmrl.demo\n"
        "print(','.join(m for m in ('prefect', 'dvc', 'mlflow') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"core imports {result.stdout.strip()}"


def test_test_modules_share_helpers_through_conftest_only():
    """A test module importing another runs (and re-collects) that module's fixtures and
    couples the two: shared helpers live in tests/conftest.py."""
    import ast

    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}:{node.lineno} imports {n}" for n in names if n.startswith("test_")
            ]
    assert not offenders, "\n".join(offenders)
