"""The growth detector's benchmark: ``python -m benchmarks.detector [--split test] [--quick]``.

``traces`` generates seeded synthetic memory traces (quiet and leaking families, with shifted
parameter ranges for the held-out "test" split) and loads the real ones under
tests/data/traces; ``baseline`` is a faithful Prometheus ``predict_linear`` alert rule;
``score`` runs ``diag.detect.replay`` and every baseline variant on the same traces, prints the
figures against the targets and exits 1 when one is missed; ``record`` re-records the real
traces (root and a memory cgroup needed).
"""
