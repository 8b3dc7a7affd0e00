"""The dependency rules of the layout (DESIGN.md), read from the imports themselves.

- A command module is a thin shell: no ``diag/cli`` module imports another command module.
- The core (``diag/`` outside the CLI) imports neither ``probes`` nor ``reports``; ``attach``
  only locates the ``probes`` package's files to put them on the target's path.
- ``reports`` renders: it imports nothing of ``probes`` (the code inside the service).
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Modules that import ``probes`` only to find where its files are, not to use it.
LOCATES_PROBES = {"diag/attach.py"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_no_command_module_imports_another():
    # One module a command; a module whose name starts with "_" is a helper they share.
    commands = {p.stem for p in (REPO / "diag" / "cli").glob("*.py") if not p.stem.startswith("_")}
    for path in modules_under("diag/cli"):
        if path.stem == "__init__":
            continue  # registers the commands
        others = {
            m for m in imported_modules(path) if m.startswith("diag.cli.") and m != "diag.cli"
        }
        assert not {m.split(".")[2] for m in others} & commands, f"{path.name} imports {others}"


def test_the_core_imports_neither_probes_nor_reports():
    for path in modules_under("diag"):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("diag/cli/"):
            continue
        top = {m.split(".")[0] for m in imported_modules(path)}
        allowed = {"probes"} if relative in LOCATES_PROBES else set()
        assert not (top & {"probes", "reports"}) - allowed, relative


def test_reports_import_nothing_that_runs_in_the_service():
    for path in modules_under("reports"):
        top = {m.split(".")[0] for m in imported_modules(path)}
        assert "probes" not in top, path.name
