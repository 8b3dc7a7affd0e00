"""Builds deploy/grafana/diag-dashboard.json: `python deploy/grafana/build_dashboard.py`.

The dashboard is generated so its panels stay uniform; tests check the JSON matches this.
"""

import json
from pathlib import Path

TARGET = Path(__file__).resolve().parent / "diag-dashboard.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'


def panel(pid, title, unit, exprs, x, y, w=12, h=8, kind="timeseries"):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


panels = [
    panel(
        1,
        "Memory against its limit",
        "bytes",
        [
            (f"diag_process_resident_memory_bytes{{{SEL}}}", "RSS {{instance}} {{worker}}"),
            (f"diag_process_unique_memory_bytes{{{SEL}}}", "USS {{instance}} {{worker}}"),
            (f"diag_memory_limit_bytes{{{SEL}}}", "limit {{instance}}"),
            (f"diag_memory_limit_usage_bytes{{{SEL}}}", "usage against the limit {{instance}}"),
        ],
        0,
        0,
    ),
    panel(
        2,
        "Leak suspected",
        "none",
        [
            (
                f"max by (instance, series) (diag_leak_suspected{{{SEL}}})",
                "{{instance}} {{series}}",
            ),
        ],
        12,
        0,
        w=6,
        kind="stat",
    ),
    panel(
        3,
        "Time to OOM (forecast, low, high)",
        "s",
        [
            (f"diag_seconds_to_oom{{{SEL}}}", "{{instance}} {{series}}"),
            (f"diag_seconds_to_oom_low{{{SEL}}}", "low {{instance}} {{series}}"),
            (f"diag_seconds_to_oom_high{{{SEL}}}", "high {{instance}} {{series}}"),
        ],
        18,
        0,
        w=6,
    ),
    panel(
        4,
        "Growth (lower envelope)",
        "Bps",
        [
            (f"diag_growth_bytes_per_second{{{SEL}}}", "{{instance}} {{series}}"),
        ],
        0,
        8,
    ),
    panel(
        5,
        "Memory retained per request",
        "bytes",
        [
            (f"diag_retained_bytes_per_request{{{SEL}}}", "{{instance}} {{endpoint}}"),
        ],
        12,
        8,
    ),
    panel(
        6,
        "Top allocation sites (tracemalloc)",
        "bytes",
        [
            (f"topk(10, diag_tracemalloc_top_bytes{{{SEL}}})", "{{instance}} {{site}}"),
        ],
        0,
        16,
    ),
    panel(
        7,
        "CUDA allocated and reserved",
        "bytes",
        [
            (f"diag_cuda_allocated_bytes{{{SEL}}}", "allocated {{instance}} gpu{{device}}"),
            (f"diag_cuda_reserved_bytes{{{SEL}}}", "reserved {{instance}} gpu{{device}}"),
            (f"diag_cuda_total_bytes{{{SEL}}}", "total {{instance}} gpu{{device}}"),
        ],
        12,
        16,
    ),
    panel(
        8,
        "Request rate",
        "reqps",
        [
            (
                "sum by (instance, endpoint) "
                f"(rate(diag_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{instance}} {{endpoint}}",
            ),
        ],
        0,
        24,
        w=8,
    ),
    panel(
        9,
        "Latency p50 / p90 / p99",
        "s",
        [
            (
                f"histogram_quantile({q}, sum by (le, endpoint) "
                f"(rate(diag_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                f"p{int(q * 100)} {{{{endpoint}}}}",
            )
            for q in (0.5, 0.9, 0.99)
        ],
        8,
        24,
        w=8,
    ),
    panel(
        10,
        "Error rate",
        "percentunit",
        [
            (
                f"sum by (endpoint) (rate(diag_request_errors_total{{{SEL}}}[$__rate_interval])) / "
                f"sum by (endpoint) (rate(diag_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{endpoint}}",
            ),
        ],
        16,
        24,
        w=8,
    ),
    panel(
        11,
        "malloc in use and free-but-retained",
        "bytes",
        [
            (f"diag_malloc_in_use_bytes{{{SEL}}}", "in use {{instance}}"),
            (f"diag_malloc_free_retained_bytes{{{SEL}}}", "retained {{instance}}"),
        ],
        0,
        32,
    ),
    panel(
        12,
        "Agent health",
        "s",
        [
            (f"diag_tick_duration_seconds{{{SEL}}}", "tick {{instance}}"),
            (f"increase(diag_probe_errors_total{{{SEL}}}[$__rate_interval])", "errors {{probe}}"),
        ],
        12,
        32,
    ),
    panel(
        13,
        "Resources: share of their limits",
        "percentunit",
        [
            (
                f"diag_resource_usage{{{SEL}}} / on (instance, worker, resource) "
                f"diag_resource_limit{{{SEL}}}",
                "{{instance}} {{resource}}",
            ),
        ],
        0,
        40,
    ),
    panel(
        14,
        "Time to resource exhaustion (forecast, low, high)",
        "s",
        [
            (f"diag_seconds_to_exhaustion{{{SEL}}}", "{{instance}} {{resource}}"),
            (f"diag_seconds_to_exhaustion_low{{{SEL}}}", "low {{instance}} {{resource}}"),
            (f"diag_seconds_to_exhaustion_high{{{SEL}}}", "high {{instance}} {{resource}}"),
        ],
        12,
        40,
        w=6,
    ),
    panel(
        15,
        "Resource growth per hour",
        "none",
        [
            (f"diag_growth_per_second{{{SEL}}} * 3600", "{{instance}} {{resource}}"),
        ],
        18,
        40,
        w=6,
    ),
    panel(
        16,
        "Open fds by kind",
        "none",
        [(f"diag_open_fds{{{SEL}}}", "{{instance}} {{kind}}")],
        0,
        48,
        w=8,
    ),
    panel(
        17,
        "Sockets by type and state",
        "none",
        [
            (
                f"sum by (instance, type, state) (diag_sockets{{{SEL}}})",
                "{{instance}} {{type}} {{state}}",
            )
        ],
        8,
        48,
        w=8,
    ),
    panel(
        18,
        "Threads, children, asyncio tasks",
        "none",
        [
            (f"diag_threads{{{SEL}}}", "threads {{kind}} {{instance}}"),
            (f"diag_child_processes{{{SEL}}}", "children {{state}} {{instance}}"),
            (
                f"sum by (instance) (diag_asyncio_tasks{{{SEL}}})",
                "asyncio tasks {{instance}}",
            ),
        ],
        16,
        48,
        w=8,
    ),
]

dashboard = {
    "title": "diag: memory and resource leaks, time to OOM and to exhaustion",
    "uid": "diag-memory",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "tags": ["diag", "memory", "resources"],
    "templating": {
        "list": [
            {
                "name": "datasource",
                "type": "datasource",
                "query": "prometheus",
                "label": "Prometheus",
                "current": {},
                "hide": 0,
            },
            {
                "name": "instance",
                "type": "query",
                "datasource": DS,
                "label": "instance",
                "query": {
                    "query": "label_values(diag_process_resident_memory_bytes, instance)",
                    "refId": "instances",
                },
                "definition": "label_values(diag_process_resident_memory_bytes, instance)",
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "refresh": 2,
                "current": {},
            },
        ]
    },
    "panels": panels,
}


def render() -> str:
    return json.dumps(dashboard, indent=2) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
