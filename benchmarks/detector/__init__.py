"""The growth detector's benchmark: ``python -m benchmarks.detector [--split test] [--quick]``.

``traces`` generates seeded synthetic memory traces (quiet and leaking families, with shifted
parameter ranges for the held-out "test" split) and loads the short real ones under
tests/data/traces; ``traces_alt`` is a second generator written independently of ``traces``
(other noise, burst, ratchet and sampling models, request counts), and ``record_library``
records, and loads, hours-long traces of real services run on this machine under real load
(tests/data/traces/real). Both are scored on every run. No threshold was tuned on either;
the independent generator's first run was read, though, and two mechanisms came from what it
showed (the stable-once-called rule's refinements and the new-territory rule; README,
Benchmarks): the recorded library is the corpus nothing here has seen. ``record_tune`` records
another fourteen real services, none of them the library's, for tuning only
(tests/data/traces/real_tune; ``perturb --corpus real_tune`` scores them).

``baseline`` is a faithful Prometheus ``predict_linear`` alert rule; ``score`` runs
``diag.detect.replay`` and every baseline variant on the same traces, prints the figures against
the targets and exits 1 when one is missed; ``record`` re-records the short real traces (root
and a memory cgroup needed).
"""
