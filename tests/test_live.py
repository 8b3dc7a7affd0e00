"""diag watch's live views (reports/live.py)."""

import io

from rich.console import Console

from reports.live import live_panel


def test_the_live_panel_fits_the_terminal_with_its_keys_line():
    """A 24-line terminal and an agent with many series: the panel drops agent rows, never its
    bottom line (which carries the keys)."""
    row = {
        "t": 0.0, "pid": 1, "rss_bytes": 2e8, "limit_bytes": 2e10,
        "growth_bytes_per_second": 5.0, "verdict": "steady", "reason": "no sustained growth",
        "seconds_to_oom": None, "seconds_to_oom_low": None, "seconds_to_oom_high": None,
        "resources": {"fds": {"usage": 20, "limit": 1024, "verdict": "steady"}},
        "agent": {f"gc_tracked_objects{{generation={i}}}": float(i) for i in range(30)},
    }  # fmt: skip
    console = Console(width=80, height=24, file=io.StringIO())
    panel = live_panel(1, ["python", "app.py"], [row], height=24, width=80)
    lines = console.render_lines(panel, pad=False)
    assert len(lines) <= 24
    assert "d: dump" in "".join(segment.text for segment in lines[-1])
