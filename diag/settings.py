"""Agent settings, from keyword arguments and ``DIAG_*`` environment variables.

Explicit arguments to ``probes.start()`` win; the environment fills in the rest; defaults last.
Both are checked by the same parsers. A bad value never stops the host: it is reported in
``Settings.problems`` (the agent logs them once), and the environment's value, else the default,
is used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_INTERVAL = 5.0
DEFAULT_PORT = 9109
DAY = 86400.0
#: The most the in-memory series may preallocate (series_capacity x max_series x 16 bytes).
MAX_SERIES_BYTES = 1 << 30


@dataclass(frozen=True)
class Settings:
    interval: float = DEFAULT_INTERVAL
    port: int | None = None
    address: str = "127.0.0.1"
    namespace: str = "diag"
    trace: bool = False
    trace_frames: int = 1
    top_sites: int = 10
    #: A traced window when a verdict turns to growing or leak (0: never), at most once per
    #: interval: the culprit search (``diag dump`` reads its finding).
    escalation_window: float = 30.0
    escalation_interval: float = 3600.0
    #: The detector's eagerness: its durations are divided by it (1.0 is the tuned default;
    #: the demo compresses hours into a minute with a large value).
    sensitivity: float = 1.0
    #: Demos only: the detector's clock runs this many times faster (60: an hour a minute).
    time_scale: float = 1.0
    detail_interval: float = 30.0
    #: Record how the process ends (signals, crashes' stacks, unhandled exceptions,
    #: os._exit) in its history: see ``probes.endings``.
    record_endings: bool = True
    #: Sample the creation stacks of files, sockets, threads and child processes between
    #: traced windows too (an audit hook: ``probes.creation``; it costs more than 5 % on a loop
    #: that only opens and closes files, so it is off by default).
    creation_stacks: bool = False
    series_capacity: int = 2048
    max_series: int = 512
    history: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    client_cafile: str | None = None
    client_capath: str | None = None
    client_auth_required: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            if f.name == "problems":
                continue
            var = ENV_PREFIX + f.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _PARSERS[f.name](raw)
            except ValueError as exc:
                problems.append(f"{var}={raw!r} ignored: {exc}")
        for name, value in overrides.items():
            if value is None:
                continue  # not given: the environment's value, else the default
            if name not in _PARSERS:
                values[name] = value  # refused below
                continue
            # Checked as the environment's are: a host that calls start(interval=0) must not
            # get an agent that ticks without pause.
            try:
                values[name] = _PARSERS[name](_format(value))
            except ValueError as exc:
                problems.append(f"{name}={value!r} ignored: {exc}")
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        capacity = values.get("series_capacity", cls.series_capacity)
        most = values.get("max_series", cls.max_series)
        if capacity * most * 16 > MAX_SERIES_BYTES:
            # Each within its bounds, too much together: the default capacity fits any count.
            problems.append(
                f"series_capacity={capacity} ignored: with max_series={most} the series would "
                f"take {capacity * most * 16 / (1 << 30):.1f} GiB (at most 1 GiB)"
            )
            del values["series_capacity"]
        return cls(**values, problems=tuple(problems))

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "problems" or value is None or value == f.default:
                continue
            env[ENV_PREFIX + f.name.upper()] = _format(value)
        return env


ENV_PREFIX = "DIAG_"


def _positive_float(raw: str) -> float:
    value = float(raw)
    # "inf" reads as a float: an interval that never ticks, a sensitivity that calls any
    # rise a leak at once.
    if not 0 < value < math.inf:
        raise ValueError("must be a positive number")
    return value


def _seconds(low: float, high: float, note: str = "") -> Callable[[str], float]:
    """A duration within [low, high]: past either end the agent would cost its host
    (ticking a thousand times a second, tracing for months) or overflow a timer."""

    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:  # nan and the infinities fail too
            raise ValueError(f"must be from {low:g} to {high:g} seconds{note}")
        return value

    return parse


def _whole(low: int, high: int, why: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high} ({why})")
        return value

    return parse


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _text(raw: str) -> str:
    return raw


def _namespace(raw: str) -> str:
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", raw):
        raise ValueError("must be letters, digits and underscores, not starting with a digit")
    return raw


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "interval": _seconds(0.01, DAY),
    "port": _port,
    "address": _text,
    "namespace": _namespace,
    "trace": _bool,
    "trace_frames": _whole(1, 100, "each frame costs every traced allocation"),
    "top_sites": _whole(1, 100, "one labelled series each"),
    # As long as a traced window asked over the control socket may be.
    "escalation_window": _seconds(0, 600, " (0: never)"),
    "escalation_interval": _seconds(0, 365 * DAY),
    "sensitivity": _positive_float,
    "time_scale": _positive_float,
    "detail_interval": _seconds(0.01, DAY),
    "record_endings": _bool,
    "creation_stacks": _bool,
    "series_capacity": _whole(1, 10_000_000, "16 bytes each, kept for every series"),
    "max_series": _whole(1, 32768, "each keeps series_capacity samples"),
    "history": _text,
    "certfile": _text,
    "keyfile": _text,
    "client_cafile": _text,
    "client_capath": _text,
    "client_auth_required": _bool,
}
