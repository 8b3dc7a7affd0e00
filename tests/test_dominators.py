"""The dominator walk (diag.dominators): who retains what, on real objects of every shape.

Each test builds a small service module of its own, runs the walk over the real heap (every
module, class and thread of this interpreter), and checks what its roots retain against the
sizes of the objects it built.
"""

import array
import collections
import mmap
import os
import sys
import threading
import time
import tracemalloc
import types
from typing import ClassVar

import pytest

from diag import OWN_DIRS, census, dominators


def _size(*objects):
    return sum(sys.getsizeof(o) for o in objects)


@pytest.fixture(autouse=True, params=["c", "python"])
def walk_in(request, monkeypatch):
    """Every test here runs on both walks: the C one (``diag/_walk.c``, built by the install)
    and the Python one it must match (the fallback where no compiler was found)."""
    if request.param == "c" and dominators._accelerated is None:
        if os.environ.get("DIAG_REQUIRE_TOOLS") == "1":
            pytest.fail("diag._walk was not built: the install found no C compiler")
        pytest.skip("diag._walk was not built (no C compiler at install): the Python walk only")
    monkeypatch.setattr(dominators, "ACCELERATED", request.param == "c")
    return request.param


@pytest.fixture
def module():
    made = types.ModuleType("dominated_service")
    sys.modules[made.__name__] = made
    yield made
    del sys.modules[made.__name__]
    made.__dict__.clear()


def _walk(survivors=(), skip=()):
    """The walk over this interpreter's heap; the module made by the test is the service's.
    ``skip``: files whose running frames are not roots (as the census skips its own)."""
    roots, boundaries = dominators.collect_roots(census._user_module, OWN_DIRS + tuple(skip))
    return dominators.analyse(
        roots,
        boundaries,
        deadline=time.monotonic() + 60,
        clock=time.monotonic,
        survivors=survivors,
    )


def _owner(analysis, root_name, key):
    owners = analysis.owners
    for label in range(len(owners)):
        container = owners.containers[label]
        root = analysis.roots[container] if container >= 0 else None
        if root is not None and root.name == root_name and owners.keys[label] == key:
            return label
    raise AssertionError(f"no owner {root_name}.{key}")


def test_a_dict_of_lists_of_bytes_is_one_owner_with_all_it_holds(module):
    audio = collections.defaultdict(list)
    for i in range(400):
        audio[f"user-{i % 40}"].append(bytes(1000) + b"%d" % i)
    module.USER_AUDIO = audio
    truth = _size(audio, *audio, *audio.values()) + sum(_size(*v) for v in audio.values())
    analysis = _walk()
    label = _owner(analysis, "dominated_service", "USER_AUDIO")
    assert analysis.owners.retained[label] == truth
    assert analysis.owners.count[label] == 1 + 40 + 40 + 400  # itself, keys, lists, bytes
    assert analysis.complete


def test_a_linked_list_is_one_owner_at_its_head(module):
    class Node:
        def __init__(self, nxt):
            self.next = nxt
            self.data = bytes(300)

    head = None
    for _ in range(1000):
        head = Node(head)
    module.HEAD = head
    analysis = _walk()
    label = _owner(analysis, "dominated_service", "HEAD")
    owners = analysis.owners
    assert owners.retained[label] >= 1000 * (sys.getsizeof(bytes(300)) + sys.getsizeof(head))
    # Nothing below the head is an owner of its own.
    entries = [i for i in range(len(owners)) if type(owners.objects[i]) is Node and i != label]
    assert entries == []


def test_slots_instances_in_a_class_attribute_are_the_class_attributes(module):
    class Reading:
        __slots__ = ("t", "values")

        def __init__(self, t):
            self.t = t
            self.values = [float(t)] * 20

    class Telemetry:
        samples: ClassVar[list[Reading]] = [Reading(1000 + i) for i in range(300)]

    Telemetry.__module__ = module.__name__
    module.Telemetry = Telemetry
    samples = Telemetry.samples
    truth = _size(samples, *samples) + sum(
        _size(r.t, r.values, *dict.fromkeys(r.values)) for r in samples
    )
    analysis = _walk()
    label = _owner(analysis, "dominated_service.test_slots_instances_in_a_class_attribute_are_the_"
                   "class_attributes.<locals>.Telemetry", "samples")  # fmt: skip
    assert analysis.roots[analysis.owners.containers[label]].kind == dominators.ROOT_CLASS
    assert analysis.owners.retained[label] == truth


def test_a_set_of_tuples_and_what_two_roots_share(module):
    module.SEEN = {(i, str(i) * 50) for i in range(1000, 1500)}
    module.A = {"kept": [bytes(5000) for _ in range(10)]}  # no local refers to them: a local
    module.B = {"also": module.A["kept"]}  # of a running frame is a root of its own
    analysis = _walk()
    seen = module.SEEN
    shared = module.A["kept"]
    owners = analysis.owners
    label = _owner(analysis, "dominated_service", "SEEN")
    truth = _size(seen) + sum(_size(t, *t) for t in seen)
    assert owners.retained[label] == truth
    # Neither A nor B retains the list both hold: it is an owner of its own.
    a = _owner(analysis, "dominated_service", "A")
    b = _owner(analysis, "dominated_service", "B")
    # (Each holds its dict; a str key the code shares goes to the first that reaches it.)
    assert owners.retained[a] < sys.getsizeof(module.A) + 100
    assert owners.retained[b] < sys.getsizeof(module.B) + 100
    entry = next(i for i, o in enumerate(owners.objects) if o is shared)
    assert owners.containers[entry] == -1
    assert owners.retained[entry] == _size(shared, *shared)


def test_a_groups_members_are_sources_that_other_walks_stop_at(module):
    # Three buffers a module's list also reaches: given as one group (as the pending tasks of
    # one coroutine are), they are the group's, and the list keeps only itself.
    module.ALSO = [bytearray(20_000) for _ in range(3)]
    roots, boundaries = dominators.collect_roots(census._user_module, OWN_DIRS)
    registry = [("the group", dominators.Group(module.ALSO))]
    roots.append(dominators.RootContainer("task", "", registry, list(registry)))
    boundaries.append(registry)
    analysis = dominators.analyse(
        roots, boundaries, deadline=time.monotonic() + 60, clock=time.monotonic
    )
    owners = analysis.owners
    group = next(i for i, key in enumerate(owners.keys) if key == "the group")
    assert owners.retained[group] == _size(*module.ALSO)
    assert owners.retained[_owner(analysis, "dominated_service", "ALSO")] == _size(module.ALSO)


class _Node:
    def __init__(self, parent=None):
        self.parent = parent
        self.items = []


def test_a_shared_entry_that_refers_back_to_a_source_takes_nothing_of_it(module):
    # A child both roots reach, which refers back to the first one (its parent): the entry
    # it becomes owns itself, and the parent keeps its own weight, however the child refers
    # back to it. (A relabelling walk from the entry once took the source and all below it.)
    service = _Node()
    service.items = [bytes(10_000) for _ in range(5)]
    child = _Node(parent=service)
    service.items.append(child)
    module.SERVICE = service
    module.REGISTRY = [child]
    del service, child  # a local of this running frame would be a root of its own
    analysis = _walk()
    owners = analysis.owners
    service = module.SERVICE
    label = _owner(analysis, "dominated_service", "SERVICE")
    assert owners.retained[label] >= _size(*service.items[:5])
    entry = next(i for i, o in enumerate(owners.objects) if o is module.REGISTRY[0])
    assert owners.retained[entry] < 1_000


def test_entries_two_sources_share_are_folded_into_one_owner(module):
    # Sessions indexed twice (by id and by name): each is reached from both indexes, so each
    # is a shared entry; folded, the pair holds them all, and neither index does.
    sessions = [[bytes(1000)] for _ in range(50)]
    module.BY_ID = dict(enumerate(sessions))
    module.BY_NAME = {f"user-{i}": s for i, s in enumerate(sessions)}
    del sessions
    analysis = _walk()
    owners = analysis.owners
    by_id = _owner(analysis, "dominated_service", "BY_ID")
    by_name = _owner(analysis, "dominated_service", "BY_NAME")
    shared = [i for i in range(len(owners)) if owners.found_from[i] == by_id]
    assert len(shared) == 50
    assert all(owners.shared_with[i] == by_name for i in shared)
    kept = [i for i in shared if i not in analysis.folded]
    assert len(kept) == 1 and all(analysis.folded[i] == kept[0] for i in shared if i != kept[0])
    truth = sum(_size(s, *s) for s in module.BY_ID.values())
    assert owners.retained[kept[0]] == truth
    assert owners.retained[by_id] < _size(module.BY_ID) + 2_000  # its dict and keys only


def test_buffers_outside_pythons_allocator_weigh_what_they_hold(module):
    torch = pytest.importorskip("torch")

    def fill():  # no local of this test's frame refers to them (it would own them)
        big = torch.zeros(1 << 16)
        module.BUFFERS = [
            bytearray(100_000),
            array.array("d", range(10_000)),
            mmap.mmap(-1, 1 << 20),
            memoryview(bytearray(50_000)),
            big,
            big[:10],  # a view: the same storage, counted once
        ]

    fill()
    analysis = _walk()
    label = _owner(analysis, "dominated_service", "BUFFERS")
    retained = analysis.owners.retained[label]
    expected = 100_000 + 10_000 * 8 + (1 << 20) + 50_000 + (1 << 16) * 4
    assert expected <= retained <= expected + 4096
    module.BUFFERS[2].close()


def test_a_threads_local_is_owned_by_its_frame():
    ready, stop = threading.Event(), threading.Event()

    def mix_forever():
        pending = [bytes(2000) for _ in range(100)]
        ready.set()
        stop.wait()
        return pending

    thread = threading.Thread(target=mix_forever, name="mixer-test", daemon=True)
    thread.start()
    ready.wait()
    try:
        analysis = _walk()
        label = _owner(analysis, "thread 'mixer-test'", "pending")
        assert analysis.owners.retained[label] >= 100 * 2000
    finally:
        stop.set()
        thread.join()


def test_survivors_are_what_was_allocated_while_tracing(module):
    class Turn:  # a managed __dict__: 3.11's get_object_traceback misses it
        def __init__(self, i):
            self.i = i

    module.OLD = [bytes(100) + b"%d" % i for i in range(50)]
    module.NEW = []
    tracemalloc.start(5)
    try:
        for i in range(200):
            module.NEW.append(bytes(100) + b"%d" % i)
            module.NEW.append(Turn(i))
        import gc

        survivors = dominators.born(gc.get_objects(), census.object_traceback)
    finally:
        tracemalloc.stop()
    new = {id(o) for o in module.NEW}
    old = {id(o) for o in module.OLD}
    found = {id(o) for o in survivors}
    assert new <= found
    assert not old & found
    analysis = _walk(survivors, skip=[__file__])  # this frame's list of them is the census's
    label = _owner(analysis, "dominated_service", "NEW")
    assert analysis.owners.survivors[label] == 400
    kinds = {kind.__name__: n for kind, (n, _) in analysis.owners.by_type[label].items()}
    assert kinds == {"bytes": 200, "Turn": 200}
    del survivors


def test_survivors_include_the_atoms_in_untracked_containers(module):
    # A chat session's turns as dicts of str: CPython untracks such a dict (it holds only
    # atoms), so the gc lists neither the dict nor its strings, which are most of the bytes.
    # A str -> str cache made before the window stays untracked as it grows in it.
    module.SESSIONS = []
    module.NAMES = {}
    tracemalloc.start(1)
    try:
        for i in range(100):
            turn = {"role": "user", "text": "x" * 300 + str(i)}
            module.SESSIONS.append([turn, ("meta", "y" * 200 + str(i))])
            module.NAMES["k" * 50 + str(i)] = "v" * 100 + str(i)
        import gc

        assert not gc.is_tracked(module.SESSIONS[0][0])  # the premise: the dict is untracked
        survivors = dominators.born(gc.get_objects(), census.object_traceback)
    finally:
        tracemalloc.stop()
    found = {id(o) for o in survivors}
    texts = [turn["text"] for turn, _ in module.SESSIONS]
    metas = [meta[1] for _, meta in module.SESSIONS]
    assert {id(t) for t in texts} <= found
    assert {id(m) for m in metas} <= found
    assert {id(v) for v in module.NAMES.values()} | {id(k) for k in module.NAMES} <= found
    del survivors


def test_the_walk_stops_at_its_deadline(module):
    module.BIG = [[bytes(10) + b"%d" % i] for i in range(20_000)]
    roots, boundaries = dominators.collect_roots(census._user_module, OWN_DIRS)
    ticks = iter(range(10**9))
    analysis = dominators.analyse(roots, boundaries, deadline=50, clock=lambda: float(next(ticks)))
    assert not analysis.complete


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ([[1, 2], [3], [3], []], [0, 0, 0, 0]),  # a diamond: the join is the root's
        ([[1], [2], [3], [1]], [0, 0, 1, 2]),  # a chain with a back edge
        ([[1], [2, 3], [4], [4], [1]], [0, 0, 1, 1, 1]),  # a loop with two branches
        ([[1], [], [1]], [0, 0, -1]),  # node 2 is unreachable
    ],
)
def test_immediate_dominators(graph, expected):
    assert dominators.immediate_dominators(graph) == expected
