"""Record the real traces under tests/data/traces: ``python -m benchmarks.detector.record``.

Three small torch "TTS" services run, each in its own child memory cgroup with a hard limit,
while this process samples, from outside, the cgroup's memory usage (memory.usage_in_bytes on
v1, memory.current on v2) every 0.5 s, and watches the child with ``probes.process.ProcessProbe``
until it is gone. The value is the cgroup's usage rather than the child's RSS because usage is
what the kernel compares with the limit: RSS also counts file pages of torch's shared libraries
(~95 MB here) that are charged to whichever cgroup first read them, so in a first recording RSS
crossed the limit a minute before the kill. (Here usage is the anonymous RSS, give or take.)

- ``torch_leak``: warm-up, one minute of steady traffic over a few canned prompts, then
  personalised prompts whose audio lands in an unbounded dict keyed by the text: it grows until
  the kernel's memcg OOM killer SIGKILLs it. ``t_leak`` is when personalised traffic begins.
- ``torch_lru``: the same service with an LRU of 64 entries: memory is flat after warm-up.
- ``torch_cache``: Zipf-popular prompts into an LRU of 600 entries: fills sublinearly over a
  few minutes, then stays flat.

Audio lengths are padded to 0.5 s buckets, as TTS servers do to batch: with continuous random
lengths, RSS crept up by ~100 MB over ten minutes even with a bounded cache (allocator
fragmentation, measured), which would leave the non-leaking trace without a clear ground truth.

Needs root and a writable memory cgroup (v1's memory controller or v2's unified hierarchy);
the child cgroups are removed afterwards. The recordings run concurrently: about 12 minutes, or
about 85 with ``torch_slow_leak`` (25 min steady, then one request in eight leaks, an hour to
the OOM kill); ``--only NAME`` records one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import json
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from probes.base import ProbeUnavailable, read_text
from probes.limits import locate_memory_cgroup
from probes.process import ProcessProbe

OUT_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "traces"
LIMIT = 600 * 1024 * 1024
SAMPLE_INTERVAL = 0.5
SLOW_SAMPLE_INTERVAL = 2.0  # the hour-long recording, kept small
STEADY_SECONDS = 60.0  # steady, non-leaking traffic before the leak starts
SLOW_STEADY_SECONDS = 1500.0
REQUESTS_PER_SECOND = 7.0
SAMPLE_RATE = 16_000

# mode -> (family, kind, seconds to run unless the OOM killer ends it first)
MODES = {
    "torch_leak": ("torch_leak", "leak", 1200.0),
    # The same bug, on one request in eight after 25 minutes of steady traffic: about an hour
    # from onset to the OOM kill, the kind of leak the recall figure is about.
    "torch_slow_leak": ("torch_leak", "leak", 6000.0),
    "torch_lru": ("torch_lru", "quiet", 600.0),
    "torch_cache": ("bounded_cache", "quiet", 720.0),
}


# --- the service (runs in the child) ---------------------------------------------------------


def _marker(name: str) -> None:
    print(json.dumps({"marker": name, "time": time.time()}), flush=True)


def serve(mode: str) -> None:
    """A TTS-like worker: text -> mel frames -> a small conv vocoder -> audio tensor."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = random.Random(0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    # ~45 MB of weights: a text embedding table plus the vocoder, like a small model load.
    embed = torch.nn.Embedding(20_000, 512)
    vocoder = torch.nn.Sequential(
        torch.nn.ConvTranspose1d(80, 64, 8, stride=4, padding=2),
        torch.nn.Tanh(),
        torch.nn.ConvTranspose1d(64, 32, 8, stride=4, padding=2),
        torch.nn.Tanh(),
        torch.nn.ConvTranspose1d(32, 1, 16, stride=8, padding=4),
    ).eval()
    to_mel = torch.nn.Linear(512, 80)

    def synthesize(text: str, seconds: float) -> torch.Tensor:
        frames = max(1, int(seconds * SAMPLE_RATE) // 128)
        ids = torch.tensor([hash(text + str(i)) % 20_000 for i in range(frames)])
        with torch.inference_mode():
            mel = to_mel(embed(ids)).T.unsqueeze(0)  # (1, 80, frames)
            audio = vocoder(mel).flatten()
        return audio.clone()  # its own storage, like a result handed back to the caller

    canned = [f"canned prompt number {i}" for i in range(40)]
    for text in canned[:5]:  # warm-up requests
        synthesize(text, 1.0)
    _marker("ready")

    capacity = {"torch_leak": None, "torch_slow_leak": None, "torch_lru": 64, "torch_cache": 600}[
        mode
    ]
    steady = SLOW_STEADY_SECONDS if mode == "torch_slow_leak" else STEADY_SECONDS
    leaky_share = 1 / 8 if mode == "torch_slow_leak" else 1.0
    cache: OrderedDict[str, torch.Tensor] = OrderedDict()
    zipf = [1.0 / (k + 1) ** 0.9 for k in range(3000)]
    started = time.monotonic()
    leaking = False
    request = 0
    while not stop.wait(rng.expovariate(REQUESTS_PER_SECOND)):
        request += 1
        if mode == "torch_cache":
            key = f"catalogue item {rng.choices(range(3000), zipf)[0]}"
            seconds = 2.0
        elif mode.endswith("leak") and (
            time.monotonic() - started < steady or rng.random() > leaky_share
        ):
            key, seconds = rng.choice(canned), 2.0
        else:
            if mode.endswith("leak") and not leaking:
                leaking = True
                _marker("leak")
            # The bug: personalised prompts are unique, so a cache keyed by text never hits.
            key = f"hello user {request}, your order is ready"
            seconds = round(rng.uniform(1.0, 3.0) * 2) / 2  # padded to 0.5 s buckets
        if key in cache:
            cache.move_to_end(key)
            continue
        cache[key] = synthesize(key, seconds)
        if capacity is not None and len(cache) > capacity:
            cache.popitem(last=False)


# --- the recorder (runs here) ----------------------------------------------------------------


def _make_cgroup(name: str, limit: int) -> tuple[Path, int]:
    """A child memory cgroup of this process's own, with ``limit``; (its path, cgroup version)."""
    found = locate_memory_cgroup(read_text("/proc/self/cgroup"), read_text("/proc/self/mountinfo"))
    if found is None:
        raise SystemExit("no memory cgroup found; recording needs one (run as root)")
    path = Path(found.directories[0]) / name
    path.mkdir(exist_ok=True)
    limit_file = "memory.limit_in_bytes" if found.version == 1 else "memory.max"
    (path / limit_file).write_text(str(limit))
    with contextlib.suppress(OSError):  # no swap to escape to, so the limit really kills
        (path / ("memory.swappiness" if found.version == 1 else "memory.swap.max")).write_text("0")
    if found.version == 1:
        with contextlib.suppress(OSError):  # a reused cgroup's peak is an earlier run's
            (path / "memory.max_usage_in_bytes").write_text("0")
    return path, found.version


def record(mode: str, limit: int = LIMIT) -> dict:
    family, kind, duration = MODES[mode]
    cgroup, version = _make_cgroup(f"diagtrace_{mode}", limit)
    limit_read = int(
        (cgroup / ("memory.limit_in_bytes" if version == 1 else "memory.max")).read_text()
    )
    usage_file = cgroup / ("memory.usage_in_bytes" if version == 1 else "memory.current")
    markers: dict[str, float] = {}
    wall0 = time.time()
    # The shell joins the cgroup and then execs the service, so all of it is charged there
    # (preexec_fn would do the same but is unsafe with the recording threads).
    service = f"{shlex.quote(sys.executable)} -m benchmarks.detector.record --serve {mode}"
    procs = shlex.quote(str(cgroup / "cgroup.procs"))
    child = subprocess.Popen(
        ["/bin/sh", "-c", f"echo $$ > {procs} && exec {service}"],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )

    def read_markers() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                markers[event["marker"]] = event["time"] - wall0

    reader = threading.Thread(target=read_markers, daemon=True)
    reader.start()
    probe = ProcessProbe(child.pid)
    rows: list[tuple[float, int]] = []
    rss = 0.0
    tick = time.monotonic()
    while time.time() - wall0 < duration and child.poll() is None:
        try:
            samples = probe.sample()
            usage = int(usage_file.read_text())
        except (ProbeUnavailable, OSError, ValueError):
            break  # gone (or a zombie: killed, not yet reaped)
        rss = next(s.value for s in samples if s.name == "process_resident_memory_bytes")
        rows.append((round(time.time() - wall0, 3), usage))
        tick += SLOW_SAMPLE_INTERVAL if mode == "torch_slow_leak" else SAMPLE_INTERVAL
        time.sleep(max(0.0, tick - time.monotonic()))
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    returncode = child.wait(timeout=60)
    reader.join(timeout=5)
    max_usage_file = cgroup / ("memory.max_usage_in_bytes" if version == 1 else "memory.peak")
    max_usage = int(max_usage_file.read_text()) if max_usage_file.exists() else None
    oom_control = cgroup / ("memory.oom_control" if version == 1 else "memory.events")
    oom_kills = next(
        int(line.split()[1])
        for line in oom_control.read_text().splitlines()
        if line.startswith("oom_kill ")
    )
    cgroup.rmdir()

    killed = returncode == -signal.SIGKILL and oom_kills > 0
    if kind == "leak" and not killed:
        raise SystemExit(f"{mode}: expected an OOM kill, got exit status {returncode}")
    t_leak = markers.get("leak") if kind == "leak" else None
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with open(OUT_DIR / f"{mode}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "value"])
        writer.writerows(rows)
    meta = {
        "name": mode,
        "family": family,
        "kind": kind,
        "limit": limit_read,
        "t_leak": t_leak,
        # The last sample the process was alive for; the kill came within one interval after.
        "t_oom": rows[-1][0] if killed else None,
        "starts": [0.0],
        "recorded": {
            "how": "python -m benchmarks.detector.record",
            "value": f"the cgroup's {usage_file.name}, read from outside",
            "sample_interval_s": SLOW_SAMPLE_INTERVAL
            if mode == "torch_slow_leak"
            else SAMPLE_INTERVAL,
            "cgroup": f"v{version} child memory cgroup, limit {limit_read} bytes, no swap",
            "exit": "SIGKILL by the memcg OOM killer" if killed else f"exit status {returncode}",
            "oom_kills": oom_kills,
            "rss_at_last_sample": int(rss),  # VmRSS, by probes.process.ProcessProbe
            "cgroup_max_usage": max_usage,
            "t_ready": markers.get("ready"),
            "requests_per_second": REQUESTS_PER_SECOND,
            "torch": importlib.metadata.version("torch"),
            "date": time.strftime("%Y-%m-%d", time.gmtime(wall0)),
        },
    }
    (OUT_DIR / f"{mode}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detector.record", description=__doc__
    )
    parser.add_argument("--only", nargs="*", choices=list(MODES), help="record only these")
    parser.add_argument("--serve", choices=list(MODES), help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    modes = args.only or list(MODES)
    with ThreadPoolExecutor(len(modes)) as pool:
        for meta in pool.map(record, modes):
            print(json.dumps({k: meta[k] for k in ("name", "limit", "t_leak", "t_oom")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
