"""Queues across Python processes: multiprocessing.Process and Pool under every start method."""

import multiprocessing as mp

import pytest

import shmq

START_METHODS = ["fork", "spawn", "forkserver"]


def _put_square(q, x):
    q.put(x * x)


def _square_into(args):
    q, x = args
    q.put(x * x)
    return x


def _consume_and_mark(q, n):
    for _ in range(n):
        q.get()
        q.task_done()


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("make", [lambda ctx, name: shmq.Queue(ctx=ctx),
                                  lambda ctx, name: shmq.Queue.create(name, type=int)],
                         ids=["unnamed of objects", "named of std::int64_t"])
def test_a_queue_passes_to_a_process(method, make, qname):
    ctx = mp.get_context(method)
    q = make(ctx, qname())
    p = ctx.Process(target=_put_square, args=(q, 7))
    p.start()
    assert q.get(timeout=60) == 49
    p.join()
    assert p.exitcode == 0


@pytest.mark.parametrize("method", START_METHODS)
def test_a_queue_passes_to_pool_tasks(method):
    ctx = mp.get_context(method)
    q = shmq.Queue()
    with ctx.Pool(2) as pool:
        assert pool.map(_square_into, [(q, i) for i in range(10)]) == list(range(10))
    assert sorted(q.get(timeout=10) for _ in range(10)) == [i * i for i in range(10)]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_joinable_queue_counts_across_processes(method):
    ctx = mp.get_context(method)
    q = shmq.JoinableQueue()
    q.put_many(range(20))
    p = ctx.Process(target=_consume_and_mark, args=(q, 20))
    p.start()
    q.join()
    assert q.unfinished_tasks() == 0
    p.join()
    assert p.exitcode == 0
