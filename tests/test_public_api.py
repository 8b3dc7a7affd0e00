"""The public API, pinned: what `diag` and `probes` export and the commands of `diag` (README,
"Public API"). A change here is a change for users: make it on purpose, with the README."""

import importlib.metadata
import subprocess
import sys

import pytest

import diag
import probes
from diag.cli import main
from tests.conftest import child_env

DIAG_API = [
    "DiagError",
    "LeakError",
    "ProcessError",
    "UsageError",
    "__version__",
    "allow_growth",
    "check",
]
PROBES_API = [
    "ASGIMiddleware",
    "Agent",
    "WSGIMiddleware",
    "agent",
    "asgi_app",
    "request",
    "start",
    "stop",
    "wsgi_app",
]
COMMANDS = ["analyze", "attach", "demo", "dump", "report", "run", "watch"]


@pytest.mark.parametrize(
    ("module", "api"), [(diag, DIAG_API), (probes, PROBES_API)], ids=["diag", "probes"]
)
def test_the_exported_names_are_exactly_the_public_api(module, api):
    assert sorted(module.__all__) == api
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == api


def test_the_errors_users_catch_and_their_exit_codes():
    assert diag.__version__ == importlib.metadata.version("diag")  # pyproject.toml's
    assert issubclass(diag.ProcessError, diag.DiagError)
    assert issubclass(diag.UsageError, diag.DiagError)
    assert (diag.DiagError.exit_code, diag.ProcessError.exit_code) == (1, 1)
    assert diag.UsageError.exit_code == 2
    assert issubclass(diag.LeakError, diag.DiagError)
    assert diag.LeakError.exit_code == 1


def test_the_commands_of_diag():
    assert sorted(main.commands) == COMMANDS


@pytest.mark.e2e
def test_importing_diag_and_probes_imports_no_torch():
    """The agent is a guest in the host: importing it pulls in neither torch nor numpy, and the
    core (`import diag`) not even click or prometheus_client. Checked in a fresh interpreter, as
    this one has imported them all."""
    heavy = ["torch", "numpy", "click", "prometheus_client"]
    code = (
        "import sys\n"
        "import diag\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        "import probes\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "['prometheus_client']"]
