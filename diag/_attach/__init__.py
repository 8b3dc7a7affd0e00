"""Files used by ``diag attach``: the ptrace injector (x86-64 Linux) and the gdb-side script
(run inside gdb's own Python, elsewhere)."""
