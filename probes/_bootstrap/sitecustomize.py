"""Put on PYTHONPATH by `diag run`: starts the diag agent before the program's first line.

It then hands over to the sitecustomize it shadows, if the environment has one, so the
program starts exactly as it would without diag. It never stops the program from starting.
"""

import os
import sys


def _chain_to_shadowed_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import sitecustomize  # type: ignore[import-not-found]  # noqa: F401 - the shadowed one
    except ImportError:
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


def _is_multiprocessing_helper() -> bool:
    """multiprocessing's resource tracker: a helper process started with our environment
    (``python -c "from multiprocessing.resource_tracker import main; main(fd)"``) that never
    runs the program's code. An agent there would join a server as one more worker."""
    argv = getattr(sys, "orig_argv", [])
    try:
        code = argv[argv.index("-c") + 1]
    except (ValueError, IndexError):
        return False
    return "multiprocessing.resource_tracker" in code


def _start_agent() -> None:
    if _is_multiprocessing_helper():
        return
    try:
        import probes
    except ImportError as exc:
        sys.stderr.write(
            f"diag: agent not started: diag is not importable by {sys.executable} ({exc}); "
            f"install it there: {sys.executable} -m pip install diag\n"
        )
        return
    try:
        probes.start()
    except Exception as exc:  # never stop the program from starting
        sys.stderr.write(f"diag: agent not started: {type(exc).__name__}: {exc}\n")


_chain_to_shadowed_sitecustomize()
_start_agent()
