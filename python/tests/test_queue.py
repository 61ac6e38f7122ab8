"""shmq.Queue, SimpleQueue and JoinableQueue in one process: multiprocessing's interface."""

import os
import pickle
import queue
import signal
import threading
import time

import pytest

import shmq


def test_any_picklable_object_comes_back_equal_in_order():
    q = shmq.Queue()
    values = ["消息1", 2, 3.5, None, b"\x00bytes", [1, {"a": (2, 3)}], {1, 2}, Exception("e")]
    for v in values:
        q.put(v)
    got = [q.get() for _ in values]
    assert got[:-1] == values[:-1]
    assert type(got[-1]) is Exception and got[-1].args == ("e",)


def test_the_seed_example_behaves_as_multiprocessing():
    q = shmq.Queue(3)
    assert q.empty()
    q.put("消息1")
    q.put("消息2")
    assert not q.full()
    q.put("消息3")
    assert q.full()
    assert q.qsize() == 3
    assert q.get() == "消息1"
    assert q.qsize() == 2


def test_full_and_empty_are_the_standard_library_exceptions():
    q = shmq.Queue(1)
    q.put(1)
    for put in (lambda: q.put(2, block=False), lambda: q.put_nowait(2),
                lambda: q.put(2, timeout=0.05), lambda: q.put(2, False, 10)):
        with pytest.raises(queue.Full) as e:
            put()
        assert isinstance(e.value, shmq.Full)
    assert q.get() == 1
    for get in (lambda: q.get(block=False), q.get_nowait, lambda: q.get(timeout=0.05),
                lambda: q.get(False, 10)):
        with pytest.raises(queue.Empty) as e:
            get()
        assert isinstance(e.value, shmq.Empty)


def test_a_timeout_waits_that_long_and_a_negative_one_not_at_all():
    q = shmq.Queue()
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 2
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)
    assert time.monotonic() - start < 0.2
    with pytest.raises(ValueError):
        q.get(timeout=float("nan"))
    with pytest.raises(TypeError):
        q.get(True, "1")
    with pytest.raises(TypeError):
        q.put(1, blocking=True)


def test_a_blocked_get_releases_the_gil_and_returns_what_a_thread_puts():
    q = shmq.Queue()
    ticks = []

    def producer():
        while len(ticks) < 20:  # runs only while get() has released the GIL
            ticks.append(1)
            time.sleep(0.001)
        q.put("done")

    t = threading.Thread(target=producer)
    t.start()
    assert q.get() == "done"
    t.join()


def _join_a_task(q):
    q.put(0)
    q.join()


def test_ctrl_c_interrupts_every_blocking_call_within_100ms():
    for blocked in (lambda q: q.get(), lambda q: (q.put(0), q.put(1)), lambda q: q.get_many(5),
                    lambda q: q.put_many(range(3)), _join_a_task):
        q = shmq.JoinableQueue(1)
        sent = []

        def interrupt():
            time.sleep(0.3)  # let the main thread block (it cannot tell us when it sleeps)
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            blocked(q)
        latency = time.monotonic() - sent[0]
        t.join()
        assert latency < 0.1, f"KeyboardInterrupt came {latency * 1000:.0f} ms after SIGINT"


def test_a_long_timed_wait_counts_one_timeout_and_one_sleep_in_stats():
    # The module waits in 50 ms slices (to run signal handlers): a slice's end is not a timeout.
    q = shmq.Queue(1)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.4)
    with pytest.raises(queue.Empty):
        q.get_many(3, timeout=0.4)
    q.put(0)
    with pytest.raises(queue.Full):
        q.put(1, timeout=0.4)
    with pytest.raises(queue.Full):
        q.put_many([1, 2], timeout=0.4)
    s = q.stats()
    assert (s["get_timeouts"], s["empty_waits"]) == (2, 2), s
    assert (s["put_timeouts"], s["full_waits"]) == (2, 2), s


def test_a_get_that_waits_many_slices_and_then_succeeds_counts_no_timeout():
    q = shmq.Queue()
    t = threading.Timer(0.4, q.put, args=(1,))  # a wait longer than several slices
    t.start()
    assert q.get(timeout=10) == 1
    t.join()
    s = q.stats()
    assert (s["get_timeouts"], s["empty_waits"]) == (0, 1), s


def _voluntary_switches(tid):
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_an_idle_join_sleeps_instead_of_polling():
    q = shmq.JoinableQueue()
    q.put(1)
    started = threading.Event()
    t = threading.Thread(target=lambda: (started.set(), q.join()))
    t.start()
    started.wait()
    time.sleep(0.1)  # let it settle into its wait (a poll would not settle)
    before = _voluntary_switches(t.native_id)
    time.sleep(1.0)
    woke = _voluntary_switches(t.native_id) - before
    q.get()
    q.task_done()
    t.join(5)
    assert not t.is_alive()
    # Sleeping in 50 ms slices wakes ~20 times a second; the old poll woke every 5 ms or sooner.
    assert woke <= 40, f"an idle join woke {woke} times in 1 s"


def test_close_refuses_puts_and_gets_on_this_handle_only():
    q = shmq.Queue()
    other = pickle.loads(pickle.dumps(q))
    q.close()
    with pytest.raises(ValueError):
        q.put(1)
    with pytest.raises(shmq.Closed):
        q.get_nowait()
    other.put(1)
    assert other.get() == 1
    q.join_thread()
    q.cancel_join_thread()


def test_shutdown_refuses_puts_and_drains_gets_then_raises():
    q = shmq.Queue()
    q.put(1)
    q.shutdown()
    with pytest.raises(shmq.ShutDown):
        q.put(2)
    assert q.get() == 1
    with pytest.raises(shmq.ShutDown):
        q.get()
    q2 = shmq.Queue()
    q2.put(1)
    q2.shutdown(immediate=True)
    with pytest.raises(shmq.ShutDown):
        q2.get()


@pytest.mark.parametrize("end, error", [(lambda q: q.shutdown(), shmq.ShutDown),
                                          (lambda q: q.close(), shmq.Closed)])
def test_shutdown_or_close_ends_a_get_blocked_in_another_thread(end, error):
    q = shmq.Queue()
    raised = []

    def consumer():
        try:
            q.get()
        except error as e:
            raised.append(e)

    t = threading.Thread(target=consumer)
    t.start()
    time.sleep(0.1)  # into its wait (nothing tells us when it sleeps)
    end(q)
    t.join(5)
    assert not t.is_alive() and len(raised) == 1


def test_simple_queue_has_put_get_empty_close():
    q = shmq.SimpleQueue()
    assert q.empty()
    q.put([1])
    assert not q.empty()
    assert q.get() == [1]
    q.close()


def test_joinable_queue_counts_tasks_and_join_waits_for_them():
    q = shmq.JoinableQueue()
    q.put(1)
    q.put_many([2, 3])
    assert q.unfinished_tasks() == 3
    done = threading.Event()

    def joiner():
        q.join()
        done.set()

    t = threading.Thread(target=joiner)
    t.start()
    for _ in range(3):
        q.get()
        assert not done.is_set()
        q.task_done()
    t.join(5)
    assert done.is_set()
    with pytest.raises(ValueError):
        q.task_done()


def test_join_after_an_immediate_shutdown_with_tasks_left_raises():
    q = shmq.JoinableQueue()
    q.put(1)
    q.shutdown(immediate=True)
    with pytest.raises(shmq.ShutDown):
        q.join()


def test_named_queues_create_open_open_or_create_remove(qname):
    name = qname()
    q = shmq.Queue.create(name, 5)
    with pytest.raises(shmq.AlreadyExists):
        shmq.Queue.create(name)
    q.put("x")
    other = shmq.Queue.open(name)
    assert other.maxsize == 5 and other.get() == "x"
    same = shmq.Queue.open_or_create(name, 99)
    assert same.maxsize == 5
    assert shmq.Queue.remove(name)
    assert not shmq.Queue.remove(name)
    with pytest.raises(shmq.NotFound):
        shmq.Queue.open(name)
    with pytest.raises(FileNotFoundError):
        shmq.Queue.open(name)
    with pytest.raises(shmq.InvalidArgument):
        shmq.Queue.create("a/b")


def test_put_many_and_get_many_keep_order():
    q = shmq.Queue()
    q.put_many(range(100))
    got = []
    while len(got) < 100:
        got += q.get_many(30)
    assert got == list(range(100))
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.01)


def test_stats_count_puts_and_gets():
    q = shmq.Queue()
    q.put(1)
    q.put(2)
    q.get()
    s = q.stats()
    assert (s["puts"], s["gets"], s["messages"]) == (2, 1, 1)
    assert s["type_name"] == "shmq::python::PythonObject"


class Unpicklable:
    def __reduce__(self):
        raise TypeError("not today")


class FailsToLoad:
    def __reduce__(self):
        return (int, ("not a number",))


def test_an_object_that_cannot_be_pickled_raises_in_put_and_writes_nothing():
    q = shmq.Queue()
    with pytest.raises(TypeError):
        q.put(Unpicklable())
    with pytest.raises(TypeError):
        q.put_many([1, Unpicklable()])
    assert q.qsize() == 0 and q.stats()["puts"] == 0


def test_a_message_that_cannot_be_unpickled_raises_in_get_and_only_it_is_dropped():
    q = shmq.Queue()
    q.put_many([1, FailsToLoad(), 2])
    assert q.get() == 1
    with pytest.raises(shmq.DecodeError) as e:
        q.get()
    assert isinstance(e.value.__cause__, ValueError)
    assert q.get() == 2
    q.put_many([1, FailsToLoad(), 2, 3])
    with pytest.raises(shmq.DecodeError) as e:
        q.get_many(10)
    assert e.value.items == [1, 2, 3]
    assert q.empty()


def test_an_object_too_large_for_the_ring_raises_before_writing():
    q = shmq.Queue(capacity_bytes=4096)
    with pytest.raises(shmq.MessageTooLarge):
        q.put(b"x" * 5000)
    with pytest.raises(ValueError):
        q.put_many([1, b"x" * 5000])
    assert q.qsize() == 0
    big = shmq.Queue(capacity_bytes=64 << 20)
    blob = os.urandom(32 << 20)
    big.put(blob)
    assert big.get() == blob


def test_threads_share_a_queue():
    q = shmq.Queue(10)
    n = 2000

    def produce(base):
        for i in range(n):
            q.put(base + i)

    threads = [threading.Thread(target=produce, args=(k * n,)) for k in range(4)]
    for t in threads:
        t.start()
    got = [q.get() for _ in range(4 * n)]
    for t in threads:
        t.join()
    assert sorted(got) == list(range(4 * n))


# The values a get may build straight from the ring (bytes, int, float, None, True, False), their
# neighbours that are pickled or copied out (a big int, a bytes subclass, str, bytearray), every
# put form and every get form: each comes back equal and of the same type; and large ones.
class _Bytes(bytes):
    pass


_VALUES = [b"", b"\x00" * 5000, 0, -1, 2**63 - 1, -2**63, 2**63, 1.5, -0.0, float("inf"),
           None, True, False, _Bytes(b"sub"), "str", bytearray(b"ba"),
           # Larger than a put or get copies holding the GIL (64 KiB): those wait without it.
           b"\x01" * 200_000, "s" * 200_000, [7] * 50_000]
_PUTS = {
    "put": lambda q, v: q.put(v),
    "put_nowait": lambda q, v: q.put_nowait(v),
    "put_timeout": lambda q, v: q.put(v, timeout=5),
    "put_block_false": lambda q, v: q.put(v, False),
    "put_many": lambda q, v: q.put_many([v]),
}
_GETS = {
    "get": lambda q: q.get(),
    "get_nowait": lambda q: q.get_nowait(),
    "get_timeout": lambda q: q.get(timeout=5),
    "get_block_false": lambda q: q.get(False),
    "get_many_1": lambda q: q.get_many(1)[0],
    "get_many_2": lambda q: q.get_many(2)[0],
}


@pytest.mark.parametrize("put", _PUTS)
@pytest.mark.parametrize("get", _GETS)
def test_every_put_form_and_get_form_keep_every_value_and_its_type(put, get):
    q = shmq.Queue()
    for v in _VALUES:
        _PUTS[put](q, v)
        got = _GETS[get](q)
        assert type(got) is type(v) and got == v, (put, get, v)
    assert q.empty()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_get_leaves_the_garbage_collector_as_it_found_it(enabled):
    import gc
    q = shmq.Queue()
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        for v in (b"x", 1, 2.0, None, "s", [1]):
            q.put(v)
            assert q.get() == v
            assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()
