"""realtime.server.collector: the garbage collector set up for a process that holds many sockets."""

from __future__ import annotations

import gc
import weakref

import pytest

from realtime.server.collector import OLDER_THRESHOLDS, tune_for_serving


@pytest.fixture(autouse=True)
def _restore_collector():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_start_up_objects_are_frozen_and_collections_are_rarer():
    gc.unfreeze()
    assert tune_for_serving(10_000)
    # The modules, Django and the app loaded by now leave the collector's generations.
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold() == (10_000, *OLDER_THRESHOLDS)


class Node:
    pass


def cycle() -> weakref.ref:
    """A reference cycle only the collector can free; a weak reference tells when it has."""
    node = Node()
    node.self = node
    return weakref.ref(node)


def test_cycles_are_still_collected_on_their_own_only_later():
    tune_for_serving(10_000)
    gc.collect()  # an empty youngest generation to count from
    freed = cycle()
    kept = [[] for _ in range(1_000)]  # past Python's 700: its collector would have run
    assert freed() is not None, "collected before REALTIME_GC_THRESHOLD allocations"
    kept += [[] for _ in range(10_000)]
    assert freed() is None, "never collected without an explicit gc.collect()"


def test_zero_keeps_pythons_defaults():
    gc.unfreeze()
    before = gc.get_threshold()
    assert not tune_for_serving(0)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
