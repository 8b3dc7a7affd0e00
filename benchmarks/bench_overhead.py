"""Benchmark: what the running agent costs a CPU service doing real torch work.

Target: a request loop running a small TTS-like torch model, with the agent sampling every
second, keeps ≥ 99 % of the throughput of the same loop without the agent.

Method: requests/second in short alternating windows, A without the agent and B with it
started (``interval=1.0``) for the window and stopped after it. Many pairs, each pair's two
windows back to back and their order alternated (AB, BA, AB, ...), so that drift of the machine
(other tenants, thermal, frequency) cancels in the per-pair ratio B/A; the verdict is the
median of those ratios, printed with their interquartile range and the pooled ratio.

One ``Agent(Settings(interval=1.0))`` is started and stopped for every B window, as one agent
lives in a service: its detail cadence (USS/PSS, gc object counts; 30 s) keeps its own clock,
so the B windows carry the detail passes at about the production rate (the first one at the
first B tick), not one per window. In B each request is also counted the way an instrumented
service counts it (``RequestScope``, what ``probes.request("tts")`` returns), and the history
is recorded, as by default, into a temporary directory.

``python -m benchmarks.bench_overhead [--quick] [--threads N]``; exit status 1 when the target
is missed or the agent did not tick during a B window (``--quick``: only the latter).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks import iqr, median, verdict
from diag.settings import Settings
from probes.agent import Agent
from probes.heap import HeapProbe
from probes.requests import RequestScope, RequestStats

TARGET = 0.99
INTERVAL = 1.0
UTTERANCES = 5  # distinct requests, served in turn: 96 to 160 tokens


@dataclass(frozen=True)
class Config:
    window: float  # seconds per window
    pairs: int  # A/B pairs
    warmup: float  # seconds of requests before the first window


# Window length: these VMs share their 2 cores with other tenants, whose bursts slow single
# windows by 5-30 %. Measured here, same loop, no agent in either window (an A/A run): 2.5 s
# windows x 12 pairs gave an IQR of the pair ratios of about ±3 % under load, so the median of
# 12 was only good to ±1.5 %; 0.5 s windows x 120 pairs gave an IQR of ±1.6 % and a median
# within 0.5 % of 1. Many short pairs resolve the 1 % target better than a few long ones, for
# the same two minutes. With 1 s windows the agent still ticks at the start and about at the end
# of every B window (at least its 1 s rate: the first tick of a start comes at once).
FULL = Config(window=1.0, pairs=60, warmup=3.0)
QUICK = Config(window=0.5, pairs=6, warmup=0.5)

# Threads: torch.set_num_threads(1) by default. On these 2-core shared VMs, two intra-op
# threads split every op across both cores and each op waits for the slower half, so a burst
# from a neighbour (or from any thread) on either core stalls the whole request; the per-window
# spread then exceeds the 1 % this benchmark must resolve (measured with 2 threads: windows from
# 7.5 to 131 req/s, pair ratios from 0.14 to 1.51). One thread per worker process is also
# the usual way CPU inference is deployed (one worker per core). It leaves the second core to
# the agent's thread, the kind setting; `--threads 2` runs the oversubscribed case, where the
# agent's tick takes CPU from a torch thread.
DEFAULT_THREADS = 1


class TinyTTS(nn.Module):
    """Token ids -> 64x longer waveform: an embedding, a convolutional encoder, a projection
    and a transposed-convolution upsampler (the shape of a vocoder-style TTS decoder)."""

    def __init__(self, vocab: int = 256, width: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.encoder = nn.Sequential(
            *(m for _ in range(3) for m in (nn.Conv1d(width, width, 5, padding=2), nn.GELU()))
        )
        self.proj = nn.Linear(width, width)
        self.upsample = nn.Sequential(
            nn.ConvTranspose1d(width, 128, 8, stride=4, padding=2),
            nn.GELU(),
            nn.ConvTranspose1d(128, 64, 8, stride=4, padding=2),
            nn.GELU(),
            nn.ConvTranspose1d(64, 32, 8, stride=4, padding=2),
            nn.GELU(),
            nn.Conv1d(32, 1, 7, padding=3),
            nn.Tanh(),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(tokens).transpose(1, 2))
        x = self.proj(x.transpose(1, 2)).transpose(1, 2)
        audio: torch.Tensor = self.upsample(x).squeeze(1)
        return audio


def make_service() -> Callable[[int], dict[str, object]]:
    """One request: synthesise an utterance and encode it as 16-bit PCM."""
    torch.manual_seed(0)
    model = TinyTTS().eval()
    lengths = [96 + 64 * i // max(1, UTTERANCES - 1) for i in range(UTTERANCES)]
    utterances = [torch.randint(0, 256, (1, length)) for length in lengths]

    def serve(i: int) -> dict[str, object]:
        with torch.inference_mode():
            audio = model(utterances[i % len(utterances)])
            pcm = (audio * 32767).to(torch.int16)
        return {"request": i, "samples": int(pcm.shape[-1]), "peak": float(audio.abs().max())}

    return serve


def instrumented(serve: Callable[[int], object], stats: RequestStats) -> Callable[[int], object]:
    """The same request counted the way an instrumented service counts it
    (``with probes.request("tts"):``), into the agent's request counters."""
    scope = RequestScope(stats, "tts")

    def counted(i: int) -> object:
        with scope:
            return serve(i)

    return counted


def run_window(serve: Callable[[int], object], seconds: float) -> tuple[int, float]:
    """Requests completed and the seconds they took, serving for at least ``seconds`` and
    ending on a whole cycle of the utterances, so every window serves the same mix."""
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds
    n = 0
    while True:
        serve(n)
        n += 1
        now = clock()
        if now >= deadline and n % UTTERANCES == 0:
            return n, now - started


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics at ranks
    n/2 ∓ z·√n/2 (the normal approximation of the binomial)."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half))
    high = min(n - 1, math.ceil(n / 2 + half) - 1)
    return ordered[low], ordered[high]


def detail_stamp(agent: Agent) -> object:
    """When the heap probe last ran its detail pass (to count them; None if unknown)."""
    for probe in agent.sampler.probes:
        if isinstance(probe, HeapProbe):
            return getattr(getattr(probe, "_cadence", None), "_last_start", None)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke-test run")
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="torch intra-op threads"
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="diag-bench-") as history:
        # The history is recorded, as by default, but into a directory removed afterwards.
        return measure(config, Settings(interval=INTERVAL, history=history), args.quick)


def measure(config: Config, settings: Settings, quick: bool) -> int:
    serve = make_service()
    agent = Agent(settings)
    served = {"A": serve, "B": instrumented(serve, agent.requests)}
    print(
        f"overhead benchmark{' (--quick: indicative only)' if quick else ''}: "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    n, seconds = run_window(serve, config.warmup)
    print(
        f"service: TinyTTS, {1000 * seconds / n:.1f} ms per request in warm-up "
        f"({n} requests); agent interval {INTERVAL:g} s"
    )
    print(
        f"{config.pairs} pairs of {config.window:g} s windows, A = no agent, B = agent running "
        "and requests counted (RequestScope); order alternates AB, BA, ..."
    )

    ratios: list[float] = []
    totals = {"A": [0, 0.0], "B": [0, 0.0]}
    ticks_in_b = 0
    detail_passes = 0
    stamp = detail_stamp(agent)
    for pair in range(config.pairs):
        rates: dict[str, float] = {}
        for kind in "AB" if pair % 2 == 0 else "BA":
            if kind == "B":
                before = agent.sampler.ticks
                agent.start()
            n, seconds = run_window(served[kind], config.window)
            if kind == "B":
                agent.stop()
                ticked = agent.sampler.ticks - before
                if ticked < 1:
                    print(f"ERROR: the agent did not tick during B window {pair + 1}")
                    return 1
                ticks_in_b += ticked
                new_stamp = detail_stamp(agent)
                if new_stamp != stamp:
                    detail_passes += 1
                    stamp = new_stamp
            rates[kind] = n / seconds
            totals[kind][0] += n
            totals[kind][1] += seconds
        ratios.append(rates["B"] / rates["A"])
        if len(ratios) % 10 == 0 or pair == config.pairs - 1:
            first = (len(ratios) - 1) // 10 * 10
            row = " ".join(f"{r:.3f}" for r in ratios[first:])
            print(f"  B/A, pairs {first + 1:>2}-{len(ratios):<2}: {row}", flush=True)

    rate_a = totals["A"][0] / totals["A"][1]
    rate_b = totals["B"][0] / totals["B"][1]
    low, high = iqr(ratios)
    mid = median(ratios)
    ok = mid >= TARGET
    b_seconds = totals["B"][1]
    print(
        f"agent ticks during B windows: {ticks_in_b} in {b_seconds:.1f} s "
        f"(interval {INTERVAL:g} s); windows with a detail pass: {detail_passes}"
    )
    print(
        f"absolute: A {rate_a:.1f} req/s, B {rate_b:.1f} req/s over all windows "
        f"(pooled B/A {rate_b / rate_a:.4f}); ratios min {min(ratios):.4f}, max {max(ratios):.4f}"
    )
    ci_low, ci_high = median_ci(ratios)
    print(
        f"noise: 95 % confidence interval of the median {ci_low:.4f}–{ci_high:.4f} "
        "(distribution-free, from the order statistics)"
    )
    print(
        f"throughput with agent / without: median {mid:.4f} over {len(ratios)} pairs "
        f"(IQR {low:.4f}–{high:.4f}) (target ≥ {TARGET:.2f}: {verdict(ok)})"
    )
    if quick:
        print("--quick: too few pairs to resolve 1 %; the verdict does not set the exit status")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
