"""Cause classification: each kind of growth from the marks it leaves on the series."""

import pytest

from diag.cause import classify

MiB = 1024 * 1024


def line(rate_per_s, start=100 * MiB, seconds=600, step=10):
    return [(float(t), start + rate_per_s * t) for t in range(0, seconds + 1, step)]


def flat(level=100 * MiB):
    return line(0.0, level)


def test_a_holder_that_grows_as_fast_as_rss_is_a_leak():
    series = {"process_resident_memory_bytes": line(MiB), "malloc_in_use_bytes": line(MiB)}
    cause = classify(series, [("svc._AUDIO_CACHE", 0.9 * MiB), ("svc.other", 1000.0)])
    assert cause.kind == "leak"
    assert "svc._AUDIO_CACHE" in cause.summary
    assert any("svc._AUDIO_CACHE grew" in e for e in cause.evidence)


def test_reserved_stepping_up_while_allocated_is_flat_is_the_caching_allocator():
    series = {
        "process_resident_memory_bytes": flat(),
        "cuda_allocated_bytes": flat(2000 * MiB),
        "cuda_reserved_bytes": line(2 * MiB, 2000 * MiB),
        "cuda_inactive_split_bytes": flat(10 * MiB),
        "cuda_alloc_retries_total": flat(0),
    }
    assert classify(series).kind == "cuda_caching_plateau"


def test_growing_split_blocks_and_retries_are_fragmentation():
    series = {
        "process_resident_memory_bytes": flat(),
        "cuda_allocated_bytes": flat(2000 * MiB),
        "cuda_reserved_bytes": line(2 * MiB, 2000 * MiB),
        "cuda_inactive_split_bytes": line(MiB, 10 * MiB),
        "cuda_alloc_retries_total": line(0.01, 0),
    }
    cause = classify(series)
    assert cause.kind == "fragmentation"
    assert "expandable_segments" in cause.summary


def test_free_memory_glibc_keeps_is_allocator_retention():
    series = {
        "process_resident_memory_bytes": flat(1000 * MiB),
        "malloc_in_use_bytes": flat(200 * MiB),
        "malloc_free_retained_bytes": flat(700 * MiB),
    }
    assert classify(series).kind == "allocator_retention"
    proven = classify(series, trimmed_bytes=650 * MiB)
    assert proven.kind == "allocator_retention"
    assert any("malloc_trim(0) returned 650.0 MiB" in e for e in proven.evidence)


def test_a_worker_whose_unique_memory_grows_with_a_flat_heap_is_copy_on_write():
    series = {
        "process_resident_memory_bytes": line(MiB / 4),
        "process_unique_memory_bytes": line(MiB / 4),
        "malloc_in_use_bytes": flat(),
        "python_allocated_blocks": flat(1e6),
    }
    assert classify(series, worker=True).kind == "copy_on_write"
    assert classify(series, worker=False).kind == "native_growth"  # not a forked worker


def test_flat_memory_and_too_few_samples():
    assert classify({"process_resident_memory_bytes": flat()}).kind == "no_growth"
    assert classify({"process_resident_memory_bytes": flat()[:2]}).kind == "unknown"


def test_a_growing_python_heap_without_a_named_holder_asks_for_a_window():
    series = {"process_resident_memory_bytes": line(MiB), "malloc_in_use_bytes": line(MiB)}
    cause = classify(series)
    assert cause.kind == "leak"
    assert "--window" in cause.summary


def test_a_window_where_no_holder_grew_is_not_called_a_leak():
    series = {"process_resident_memory_bytes": line(MiB), "malloc_in_use_bytes": line(MiB)}
    cause = classify(series, [("svc._RECENT", 12.0), ("svc.other", -40.0)])
    assert cause.kind == "unexplained"


def test_a_fast_growing_holder_is_a_leak_even_when_rss_grows_faster():
    # A short traced window: RSS also carries tracemalloc's memory and is noisy.
    series = {
        "process_resident_memory_bytes": line(2 * MiB),
        "malloc_in_use_bytes": line(0.3 * MiB),
    }
    assert classify(series, [("svc._ERRORS", 0.3 * MiB)]).kind == "leak"
    # A holder creeping at a few KB/s beside fast native growth is not blamed for it.
    assert classify(series, [("svc.small", 5000.0)]).kind != "leak"


ENGINE = ["svc", ".ENGINE"]


def test_holders_that_grow_together_beneath_one_root_name_that_root():
    # An engine keeping each session's tensors in five containers of its own: each a fifth.
    series = {"process_resident_memory_bytes": line(MiB), "malloc_in_use_bytes": line(MiB)}
    parts = ["kv", "logits", "audio", "mask", "embeddings"]
    growth = [(f"svc.ENGINE.{part}[<str>]", 0.18 * MiB) for part in parts]
    growth.append(("svc.OTHER", 0.01 * MiB))
    steps = {f"svc.ENGINE.{part}[<str>]": [*ENGINE, f".{part}", "[<str>]"] for part in parts}
    steps["svc.OTHER"] = ["svc", ".OTHER"]
    cause = classify(series, growth, owner_steps=steps)
    assert cause.kind == "leak"
    assert cause.summary == "live objects are piling up under svc.ENGINE, in 5 holders beneath it"
    assert cause.culprit is not None
    assert (cause.culprit["path"], cause.culprit["holders"]) == ("svc.ENGINE", 5)
    assert cause.culprit["share"] == pytest.approx(0.9, rel=0.05)
    # Without the chains (a replay of an older history), no root groups them: the five are
    # named together, none alone (naming the first would send the reader to a fifth).
    assert classify(series, growth).summary.startswith(
        "live objects are piling up in 5 holders, none the culprit alone: svc.ENGINE.kv[<str>], "
    )


def test_a_holder_that_explains_the_growth_alone_is_named_alone():
    series = {"process_resident_memory_bytes": line(MiB), "malloc_in_use_bytes": line(MiB)}
    growth = [("svc.ENGINE.kv[<str>]", 0.6 * MiB), ("svc.ENGINE.logits[<str>]", 0.3 * MiB)]
    steps = {
        "svc.ENGINE.kv[<str>]": [*ENGINE, ".kv", "[<str>]"],
        "svc.ENGINE.logits[<str>]": [*ENGINE, ".logits", "[<str>]"],
    }
    cause = classify(series, growth, owner_steps=steps)
    assert cause.summary == "live objects are piling up in svc.ENGINE.kv[<str>]"
    assert cause.culprit is not None and cause.culprit["holders"] == 1


def test_holders_beneath_different_roots_are_no_group():
    # Five module globals each growing a fifth: no root variable holds them together (their
    # module alone is no root). Naming the first fast one, as this once did, sent the reader
    # to a fifth of the leak: all five are named, none as the culprit.
    series = {"process_resident_memory_bytes": line(MiB), "malloc_in_use_bytes": line(MiB)}
    names = ["A", "B", "C", "D", "E"]
    growth = [(f"svc.{name}", 0.18 * MiB) for name in names]
    steps = {f"svc.{name}": ["svc", f".{name}"] for name in names}
    cause = classify(series, growth, owner_steps=steps)
    assert cause.kind == "leak"
    assert cause.summary == (
        "live objects are piling up in 5 holders, none the culprit alone: svc.A, svc.B, svc.C, "
        "svc.D, svc.E (90% of the growth together)"
    )
    assert cause.culprit is None
    assert "svc.E grew 648.0 MiB/h, 18% of the growth" in cause.evidence
    # One fast holder among slow ones is still named alone, with its share.
    alone = classify(series, [("svc.A", 0.18 * MiB), ("svc.B", 0.02 * MiB)], owner_steps=steps)
    assert alone.summary == "live objects are piling up in svc.A"
