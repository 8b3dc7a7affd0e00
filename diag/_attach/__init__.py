"""Files used by ``diag attach``: the gdb-side script (run inside gdb's own Python)."""
