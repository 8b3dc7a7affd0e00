"""Turning what diag found into things people read: post-mortems (terminal, HTML, Markdown,
JSON), dumps and their graphs, ``diag analyze``'s results and ``diag watch``'s live views.

Rendering over data that others built (a history, a dump document, a watcher's rows): it never
samples. The OS readers a post-mortem consults (the kernel log, whether the pid still runs) are
``diag.procfs``'s, taken as injectable defaults.
"""
