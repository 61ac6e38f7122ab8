"""Shared fixtures: unique queue names removed after each test, and a check that a test leaves no
segment of its own in /dev/shm and no child process behind."""

import itertools
import multiprocessing
import os

import pytest

import shmq

_counter = itertools.count()


def _ours():
    prefix = f"shmq.pytest_{os.getpid()}_"
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith(prefix))


@pytest.fixture
def qname():
    """A fresh queue name for this test (removed at the end, if the test left it)."""
    names = []

    def make():
        name = f"pytest_{os.getpid()}_{next(_counter)}"
        names.append(name)
        return name

    yield make
    for name in names:
        shmq.Queue.remove(name)


@pytest.fixture(autouse=True)
def leaves_nothing(request):
    yield
    for child in multiprocessing.active_children():
        child.kill()
        child.join()
        pytest.fail(f"{request.node.name} left a child process running")
    assert _ours() == [], f"{request.node.name} left segments in /dev/shm"


def peer():
    """The C++ test program (python/tests/cpp_peer.cpp)."""
    path = os.environ.get("SHMQ_PYTHON_PEER")
    if not path:
        pytest.skip("SHMQ_PYTHON_PEER is not set (run the tests through ctest)")
    return path
