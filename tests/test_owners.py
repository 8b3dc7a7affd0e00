"""Finding who holds leaked objects: readable paths, many objects at once, our own skipped."""

import gc
import importlib
import sys
import threading
from types import SimpleNamespace
from typing import ClassVar

import pytest

from diag.owners import find_holders, name_objects

torch = pytest.importorskip("torch")

SERVICE = """
import torch
_AUDIO_CACHE = {}

def synthesize(text):
    return torch.zeros(256)

def talk(i):
    _AUDIO_CACHE[f"req-{i}"] = synthesize("hello")

class ChatMemory:
    sessions = {}

def make_mixer():
    kept = [torch.ones(4) for _ in range(30)]
    def mix():
        return kept
    return mix

@__import__("functools").lru_cache(maxsize=None)
def embed(word):
    return torch.ones(8)
"""


@pytest.fixture
def service(tmp_path, monkeypatch):
    (tmp_path / "leaky_service.py").write_text(SERVICE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("leaky_service")
    yield module
    sys.modules.pop("leaky_service", None)
    # Its functions and globals refer to each other: without this, the module and its 2,000
    # tensors live on until a full collection, and later tests' dumps see them as holders.
    module.__dict__.clear()


def test_holders_of_every_kind_are_named(service):
    for i in range(2000):
        service.talk(i)
    for i in range(120):
        service.ChatMemory.sessions[i] = torch.ones(2)
    mixer = service.make_mixer()
    for i in range(40):
        service.embed(f"w{i}")
    started, stop = threading.Event(), threading.Event()

    def mix_forever():
        buf = [torch.ones(3) for _ in range(25)]
        started.set()
        stop.wait()
        return buf

    thread = threading.Thread(target=mix_forever, name="mixer", daemon=True)
    thread.start()
    started.wait()
    try:
        everything = [o for o in gc.get_objects() if type(o) is torch.Tensor]
        result = find_holders(everything, time_budget=10)
    finally:
        stop.set()
        thread.join()
    paths = {h.path: h.count for h in result.holders}
    assert paths["leaky_service._AUDIO_CACHE"] == 2000
    assert result.holders[0].path == "leaky_service._AUDIO_CACHE"  # the biggest first
    assert result.holders[0].kind == "dict"
    assert paths["leaky_service.ChatMemory.sessions"] == 120
    assert paths["thread 'mixer' › mix_forever() › buf"] == 25
    test_frame = "thread 'MainThread' › test_holders_of_every_kind_are_named()"
    assert paths[f"{test_frame} › mixer › kept (closure of make_mixer.<locals>.mix())"] == 30
    assert paths["leaky_service.embed (its functools.lru_cache)"] == 40
    assert result.complete
    del mixer


def test_the_callers_own_list_is_not_a_holder():
    targets = [torch.ones(1) for _ in range(10)]
    result = find_holders(targets)
    assert result.holders == []  # only the list passed in holds them
    assert result.orphans == 10


_HELD: dict[int, object] = {}


def test_it_stops_at_its_time_budget():
    targets = [torch.ones(1) for _ in range(5000)]
    _HELD.update(enumerate(targets))  # a global: found by the heap search, not the frame scan
    try:
        result = find_holders(targets, time_budget=0.0)
        assert not result.complete and result.unplaced == 5000
        result = find_holders(targets, time_budget=10.0)
        assert result.complete
        assert [(h.path, h.count) for h in result.holders] == [("tests.test_owners._HELD", 5000)]
    finally:
        _HELD.clear()


def test_locals_of_a_running_function_are_named():
    targets = [torch.ones(1) for _ in range(50)]
    box = SimpleNamespace(store=dict(enumerate(targets)))
    result = find_holders(targets)
    assert [(h.path, h.count) for h in result.holders] == [
        ("thread 'MainThread' › test_locals_of_a_running_function_are_named() › box.store", 50)
    ]
    del box


_ERRORS: list[Exception] = []


def _fail_with_audio():
    audio = torch.ones(7)  # noqa: F841 (the traceback keeps the frame, and it)
    raise RuntimeError("vocoder failed")


def _count_passes(monkeypatch):
    """From now on, each ``gc.get_referrers`` call (a pass over the heap) is counted: the
    list it returns gets the number of objects each call asked about (counts, never the
    objects: a spy that kept them would keep them alive for later tests)."""
    passes = []
    get_referrers = gc.get_referrers

    def counted(*objects):
        passes.append(len(objects))
        return get_referrers(*objects)

    monkeypatch.setattr(gc, "get_referrers", counted)
    return passes


def test_many_holders_of_one_object_each_cost_a_few_passes(monkeypatch):
    # A thousand exceptions, each pinning a frame that holds one tensor: a thousand holders.
    for _ in range(1000):
        try:
            _fail_with_audio()
        except RuntimeError as exc:
            _ERRORS.append(exc)
    try:
        targets = [o for o in gc.get_objects() if type(o) is torch.Tensor and o.shape == (7,)]
        passes = _count_passes(monkeypatch)
        result = find_holders(targets, time_budget=30.0)
    finally:
        _ERRORS.clear()
    assert [(h.path, h.count) for h in result.holders] == [
        ("tests.test_owners._ERRORS[<int>].__traceback__ › _fail_with_audio() › audio", 1000)
    ]
    assert result.complete
    # Sampled passes place 32 holders each: after the first, one full pass places the rest
    # (and the paths' levels are full passes too), not 1000 / 32 sampled ones.
    assert len(passes) <= 3, passes


def test_referrers_from_the_callers_own_pass_spare_the_search_its_passes(monkeypatch):
    # The census lists what refers to the targets in its own pass over the heap: the search
    # then makes none, and a module's global is named without one either.
    targets = [torch.ones(1) for _ in range(40)]
    _HELD.update(enumerate(targets[:30]))
    passes = _count_passes(monkeypatch)
    try:
        result = find_holders(targets, time_budget=10.0, referrers=[_HELD])
    finally:
        _HELD.clear()
    assert [(h.path, h.count) for h in result.holders] == [("tests.test_owners._HELD", 30)]
    assert result.orphans == 10  # the caller's list alone holds the rest
    assert result.complete
    assert passes == []


class _Voices:
    """A class attribute holding tensors."""

    cache: ClassVar[dict[int, torch.Tensor]] = {}


def _make_recorder():
    kept = []

    def record(x):
        kept.append(x)

    return record


_record = _make_recorder()


def test_class_attributes_and_closures_are_named_without_a_pass_over_the_heap(monkeypatch):
    # Their parents follow from how classes and closures are laid out (a class's namespace,
    # the cell of a module function's closure), as a module's global finds its module.
    targets = [torch.ones(2) for _ in range(10)]
    _Voices.cache.update(enumerate(targets[:5]))
    for tensor in targets[5:]:
        _record(tensor)
    referrers = [_Voices.cache, _record.__closure__[0].cell_contents]
    passes = _count_passes(monkeypatch)
    try:
        result = find_holders(targets, time_budget=10.0, referrers=referrers)
    finally:
        _Voices.cache.clear()
        _record.__closure__[0].cell_contents.clear()
        referrers.clear()
    assert sorted((h.path, h.count) for h in result.holders) == [
        ("tests.test_owners._Voices.cache", 5),
        ("tests.test_owners._record › kept (closure of _make_recorder.<locals>.record())", 5),
    ]
    assert result.complete
    assert passes == []


def test_a_path_search_cut_by_its_deadline_says_so():
    held = {"audio": torch.ones(1)}
    _HELD[0] = held
    try:
        names, in_time = name_objects([held], time_budget=0.0)
        assert not in_time
        assert names[0][0] == "<dict: path search out of time>"
        names, in_time = name_objects([held], time_budget=10.0)
        assert in_time
        assert names[0][0] == "tests.test_owners._HELD[<int>]"
    finally:
        _HELD.clear()
