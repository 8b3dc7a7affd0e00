"""A child memory cgroup with a limit, for a real OOM kill in the demo (and the tests).

Needs the right to create a cgroup under our own (root, or a delegated subtree) with the
memory controller: cgroup v1 (``memory.limit_in_bytes``) or v2 (``memory.max``). Where that
is not possible ``create`` says why and the caller does without.
"""

from __future__ import annotations

import contextlib
import os


class MemoryCgroup:
    def __init__(self, path: str, limit_file: str) -> None:
        self.path = path
        self._limit_file = limit_file

    @classmethod
    def create(cls, limit_bytes: int, name: str) -> tuple[MemoryCgroup | None, str]:
        """(the cgroup, "") or (None, why not)."""
        try:
            with open("/proc/self/cgroup") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            return None, f"no /proc/self/cgroup ({exc})"
        v1 = next((line.split(":", 2)[2] for line in lines if ":memory:" in line), None)
        v2 = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
        if v1 is not None:
            path, limit_file = f"/sys/fs/cgroup/memory{v1}/{name}", "memory.limit_in_bytes"
        elif v2 is not None:
            path, limit_file = f"/sys/fs/cgroup{v2}/{name}", "memory.max"
        else:
            return None, "no memory cgroup controller"
        try:
            os.mkdir(path)
            cgroup = cls(path, limit_file)
            with open(os.path.join(path, limit_file), "w") as f:
                f.write(str(limit_bytes))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None, f"cannot create a memory cgroup ({exc.strerror or exc}); needs root"
        return cgroup, ""

    def join(self) -> None:
        """Move the calling process in (a ``preexec_fn``: the child joins before it execs)."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def stuck_at_limit(self) -> int | None:
        """The cgroup's count of charges refused at its limit while its usage is within 2 %
        of the limit, else None (or where the files cannot be read). A count that keeps rising
        at the limit with no kill is a process the kernel keeps reclaiming from (its own code
        pages, faulted back in at once) instead of killing: stuck, not dying."""
        try:
            if self._limit_file == "memory.limit_in_bytes":
                usage = _read_int(self.path, "memory.usage_in_bytes")
                refused = _read_int(self.path, "memory.failcnt")
            else:
                usage = _read_int(self.path, "memory.current")
                with open(os.path.join(self.path, "memory.events")) as f:
                    events = dict(line.split() for line in f if line.strip())
                refused = int(events["max"])
            limit = _read_int(self.path, self._limit_file)
        except (OSError, ValueError, KeyError):
            return None
        return refused if usage >= 0.98 * limit else None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def _read_int(directory: str, name: str) -> int:
    with open(os.path.join(directory, name)) as f:
        return int(f.read().split()[0])
