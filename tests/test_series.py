from diag.model import Sample, Tick, labels_of, series_key
from diag.series import Ring, SeriesStore


def test_ring_keeps_newest_in_order():
    ring = Ring(3)
    for i in range(5):
        ring.append(float(i), float(i * 10))
    assert ring.items() == [(2.0, 20.0), (3.0, 30.0), (4.0, 40.0)]
    assert len(ring) == 3


def test_ring_partial_fill():
    ring = Ring(4)
    ring.append(1.0, 5.0)
    assert ring.items() == [(1.0, 5.0)]


def test_store_refuses_series_beyond_cap_and_counts_them():
    store = SeriesStore(capacity=8, max_series=2)
    samples = [Sample(f"s{i}", 1.0) for i in range(5)]
    for t in range(100):
        store.add(float(t), samples)
    assert len(store) == 2
    assert store.dropped_series == 3 * 100
    assert store.nbytes <= store.max_nbytes == 2 * 8 * 16
    assert [v for _, v in store.get("s0")] == [1.0] * 8
    assert store.names()[:2] == ["s0", "s1"]


def test_series_key_and_tick_value():
    labels = labels_of(device="0", b="x")
    assert labels == (("b", "x"), ("device", "0"))
    assert series_key("cuda_allocated_bytes", labels) == "cuda_allocated_bytes{b=x,device=0}"
    tick = Tick(1.0, (Sample("a", 2.0), Sample("a", 3.0, labels)))
    assert tick.value("a") == 2.0
    assert tick.value("a", labels) == 3.0
    assert tick.value("missing") is None
