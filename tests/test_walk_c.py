"""The C walk (diag/_walk.c) against the Python walk it replaces, on one heap holding every shape
they handle differently: the same owners, weights, counts and labels, object for object."""

import collections
import gc
import os
import sys
import time
import types

import pytest

from diag import OWN_DIRS, census, dominators


@pytest.fixture
def module():
    made = types.ModuleType("walked_service")
    sys.modules[made.__name__] = made
    yield made
    del sys.modules[made.__name__]
    made.__dict__.clear()


class _Node:
    def __init__(self, parent=None):
        self.parent = parent
        self.items = []


class _Odd(dict):
    """A dict subclass whose own iteration lies: the walk must list its real keys."""

    def __iter__(self):
        raise RuntimeError("the host's __iter__ must not run")


class _Unsizable:
    def __sizeof__(self):
        raise RuntimeError("a __sizeof__ that raises weighs nothing")


def _varied_service(module):
    """One module holding every shape the walk handles differently."""
    torch = pytest.importorskip("torch")
    shared = [[bytes(500) + b"%d" % i] for i in range(30)]  # entries two globals share
    atom = "a string two globals hold" + "!" * 20
    parent = _Node()
    child = _Node(parent=parent)  # an entry that refers back to a source
    parent.items = [child, bytes(2_000)]
    head = None
    for i in range(3_000):  # deeper than a chunk: a linked list of slots-free nodes
        head = _Node(head)
        head.items = [i, float(i), complex(i, 1)]
    storage = torch.zeros(1024)
    module.CACHE = collections.defaultdict(list, {f"u{i}": [bytes(100)] * 3 for i in range(500)})
    module.ORDERED = collections.OrderedDict((f"k{i}", [i]) for i in range(300))
    module.MIXED = {1: "one", "two": [2], ("t",): {"nested": bytearray(300)}}
    module.ODD = _Odd({f"odd{i}": bytes(64) for i in range(100)})
    module.UNSIZABLE = [_Unsizable() for _ in range(10)]
    module.LEFT = {"all": shared, "atom": [atom]}
    module.RIGHT = {"all": list(shared), "atom": [atom]}
    module.PARENT = parent
    module.REGISTRY = [child]
    module.HEAD = head
    module.TENSORS = [storage, storage[:10], torch.ones(10)]
    module.CYCLE = []
    module.CYCLE.append(module.CYCLE)


def _summary(analysis, module):
    """What the walk said about the module's objects: each owner's label, weight and count
    (named by its variable, or by the object for a shared entry), and the label of every
    object the module reaches."""
    owners = analysis.owners

    def name(label):
        if label < 0:
            return label
        if owners.containers[label] >= 0:
            return (analysis.roots[owners.containers[label]].name, owners.keys[label])
        return ("entry", id(owners.objects[label]), name(owners.found_from[label]))

    ours = {
        name(label): (owners.retained[label], owners.count[label], owners.shared_with[label])
        for label in range(len(owners))
        if analysis.roots[owners.containers[label]].name == module.__name__
        or (owners.containers[label] < 0 and name(owners.found_from[label])[0] == module.__name__)
    }
    reached, stack = {}, list(module.__dict__.values())
    while stack:
        obj = stack.pop()
        if id(obj) in reached or isinstance(obj, (type, types.ModuleType)):
            continue
        reached[id(obj)] = analysis.labels.get(id(obj))
        stack.extend(gc.get_referents(obj))
    labels = {ident: name(label) if label is not None else None for ident, label in reached.items()}
    return ours, labels


def test_the_c_walk_gives_what_the_python_walk_gives(module, monkeypatch):
    # The two walks over the same heap, everything compared: the Python walk is the reference.
    if dominators._accelerated is None:
        if os.environ.get("DIAG_REQUIRE_TOOLS") == "1":
            pytest.fail("diag._walk was not built: the install found no C compiler")
        pytest.skip("diag._walk was not built (no C compiler at install): nothing to compare")
    _varied_service(module)
    results = []
    for accelerated in (True, False):
        monkeypatch.setattr(dominators, "ACCELERATED", accelerated)
        roots, boundaries = dominators.collect_roots(census._user_module, (*OWN_DIRS, __file__))
        analysis = dominators.analyse(  # (this file's frames are not roots: the summaries
            roots, boundaries, deadline=time.monotonic() + 60, clock=time.monotonic
        )  # kept here would be owners of their own)
        results.append(_summary(analysis, module))
        del analysis
    (c_owners, c_labels), (py_owners, py_labels) = results
    assert len(c_owners) > 10 and len(c_labels) > 5_000
    assert c_owners == py_owners
    assert c_labels == py_labels
