"""shmq: multiprocessing.Queue in shared memory, faster, crash-safe, and shared with C++.

    import shmq
    q = shmq.Queue()            # as multiprocessing.Queue(): any picklable object
    q.put({"job": 1}); q.get()
    jobs = shmq.Queue.open("jobs")                      # a named queue, made by C++ or Python
    ints = shmq.Queue.create("ints", type="std::int64_t")  # readable as shmq::Queue<std::int64_t>

See the README's "Python" section for the whole interface and the table of C++ types.
"""

from . import _errors
from ._errors import *  # noqa: F401,F403  (the exception classes)
from ._shmq import _Queue

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "DEFAULT_CAPACITY_BYTES"] + _errors.__all__

DEFAULT_CAPACITY_BYTES = 1 << 20
"""Bytes of ring a queue gets unless told otherwise (as in C++): messages up to this size less 4."""

_DEFAULT_MODE = 0o600


def _maxsize(maxsize):
    # multiprocessing.Queue: a maxsize of 0 or less means no limit.
    return max(int(maxsize), 0)


def _make(cls, maxsize, type, capacity_bytes, mode, name, how):
    q = cls.__new__(cls)
    _Queue.__init__(q, _maxsize(maxsize), type, capacity_bytes, mode, name, how)
    q._made()
    return q


def _reopen(cls, name, type):
    """How a pickled queue comes back (in a spawned process, a Pool worker): by its name."""
    return _make(cls, 0, type, DEFAULT_CAPACITY_BYTES, _DEFAULT_MODE, name, "open")


class Queue(_Queue):
    """multiprocessing.Queue in shared memory.

    Queue(maxsize=0) holds at most maxsize messages (0 or less: as many as fit
    capacity_bytes). Messages are any picklable object, unless type= names a C++ type
    ("std::string", "std::vector<double>", str, int, float, bytes ...): then they are that
    type's encoding, which a C++ shmq::Queue<T> of the same type reads and writes.

    put/get and their forms release the GIL while they wait, answer Ctrl-C within 50 ms,
    and raise queue.Full / queue.Empty (as shmq.Full / shmq.Empty) like the standard library.
    A queue pickles by name: it passes to multiprocessing.Process and Pool under every start
    method. An unnamed queue opens elsewhere while the process that made it holds it.
    """

    def __init__(self, maxsize=0, *, ctx=None, type=None,
                 capacity_bytes=DEFAULT_CAPACITY_BYTES, mode=_DEFAULT_MODE):
        super().__init__(_maxsize(maxsize), type, capacity_bytes, mode, None, "anonymous")
        self._made()

    def _made(self):
        pass

    # ---- Named queues, as shmq::Queue<T>::create / open / open_or_create / remove.
    @classmethod
    def create(cls, name, maxsize=0, *, type=None, capacity_bytes=DEFAULT_CAPACITY_BYTES,
               mode=_DEFAULT_MODE):
        """A new named queue, living until remove(name); AlreadyExists if the name is taken."""
        return _make(cls, maxsize, type, capacity_bytes, mode, name, "create")

    @classmethod
    def open(cls, name, *, type=None):
        """An existing queue (named, or an unnamed one's .name). Without type=, its messages are
        what its header records (pickles, or a C++ type); with it, Incompatible unless they are
        that. NotFound if there is no such queue."""
        return _make(cls, 0, type, DEFAULT_CAPACITY_BYTES, _DEFAULT_MODE, name, "open")

    @classmethod
    def open_or_create(cls, name, maxsize=0, *, type=None,
                       capacity_bytes=DEFAULT_CAPACITY_BYTES, mode=_DEFAULT_MODE):
        """Opens name, or creates it; of many racing callers exactly one creates."""
        return _make(cls, maxsize, type, capacity_bytes, mode, name, "open_or_create")

    @staticmethod
    def remove(name):
        """Removes the name; returns whether it existed. Handles already open keep working."""
        return _Queue._remove(name)

    # ---- multiprocessing.Queue's feeder-thread calls: shmq has no feeder thread (put returns
    # once the message is in shared memory), so there is nothing to join or cancel.
    def join_thread(self):
        pass

    def cancel_join_thread(self):
        pass

    def __reduce__(self):
        return (_reopen, (self.__class__, self.name, self.cpp_type))

    def __repr__(self):
        kind = f"type={self.cpp_type!r}" if self.cpp_type else "pickled objects"
        return f"<shmq.{self.__class__.__name__} {self.name!r} maxsize={self.maxsize} {kind}>"


class SimpleQueue(Queue):
    """multiprocessing.SimpleQueue: put(obj), get(), empty(), close(); unbounded by count."""

    def __init__(self, *, ctx=None, type=None, capacity_bytes=DEFAULT_CAPACITY_BYTES,
                 mode=_DEFAULT_MODE):
        super().__init__(0, type=type, capacity_bytes=capacity_bytes, mode=mode)


class JoinableQueue(Queue):
    """multiprocessing.JoinableQueue: every put counts a task (by any handle, in any process),
    task_done() marks one done, join() waits for none to be left."""

    def _made(self):
        self._make_joinable()

    def task_done(self):
        """Marks one task done; ValueError if more than were put."""
        self._task_done()

    def join(self):
        """Waits until every task put is done (Ctrl-C interrupts it). ShutDown after
        shutdown(immediate=True) with tasks left."""
        self._join()

    def unfinished_tasks(self):
        return self._unfinished_tasks()
