"""Python's multiprocessing on shmq_bench's scenarios: the system users port from.

Prints one JSON object per line: {"scenario": ..., "msgs_per_s": ...} for throughput,
{"scenario": ..., "p50_us": ..., "p99_us": ...} for round trips, {"scenario": ..., "seconds": ...}
for Pool.map. Medians of --reps runs. Every run is verified (count and checksum).
"""
import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time


def produce(q, n, size):
    payload = b"\x5a" * (size - 8) if size > 8 else None
    for i in range(n):
        q.put(i if payload is None else (i, payload))
    q.put(None)


def consume(q, out):
    count = total = 0
    while True:
        m = q.get()
        if m is None:
            break
        count += 1
        total += m if isinstance(m, int) else m[0]
    out.put((count, total))


def throughput(n, size):
    q, out = mp.Queue(), mp.Queue()
    start = time.perf_counter()
    c = mp.Process(target=consume, args=(q, out))
    p = mp.Process(target=produce, args=(q, n, size))
    c.start()
    p.start()
    count, total = out.get()
    p.join()
    c.join()
    seconds = time.perf_counter() - start
    if count != n or total != n * (n - 1) // 2:
        sys.exit("python_peer: lost or corrupted messages")
    return n / seconds


def echo(there, back, r, cpu=None):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    for _ in range(r):
        back.put(there.get())


def timed_round_trips(r, echo_process, ask):
    """p50 and p99 of r round trips; ask(i) sends i to echo_process and returns its answer."""
    echo_process.start()
    us = []
    for i in range(r):
        t0 = time.perf_counter()
        if ask(i) != i:
            sys.exit("python_peer: a round trip returned the wrong value")
        us.append((time.perf_counter() - t0) * 1e6)
    echo_process.join()
    us.sort()
    return us[len(us) // 2], us[len(us) * 99 // 100]


@contextlib.contextmanager
def pinned(cpu):
    """Runs the body on CPU `cpu` only (None: where the scheduler likes)."""
    if cpu is None:
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def round_trips(r, make=mp.Queue, cpus=(None, None)):
    """Round trips through two queues from make() (multiprocessing's unless given): put, echoed
    by another process, get. cpus: the CPUs of this process and of the echo's (None: unpinned)."""
    there, back = make(), make()

    def ask(i):
        there.put(i)
        return back.get()
    with pinned(cpus[0]):
        return timed_round_trips(r, mp.Process(target=echo, args=(there, back, r, cpus[1])), ask)


def pipe_echo(conn, r):
    for _ in range(r):
        conn.send(conn.recv())


def pipe_round_trips(r):
    a, b = mp.Pipe()

    def ask(i):
        a.send(i)
        return a.recv()
    return timed_round_trips(r, mp.Process(target=pipe_echo, args=(b, r)), ask)


def plus_one(x):
    return x + 1


def pool_map(items):
    with mp.Pool(2) as pool:
        start = time.perf_counter()
        out = pool.map(plus_one, range(items))
        seconds = time.perf_counter() - start
    if out != list(range(1, items + 1)):
        sys.exit("python_peer: Pool.map returned wrong results")
    return seconds


def pool_imap(items, chunksize, ordered):
    with mp.Pool(2) as pool:
        start = time.perf_counter()
        results = (pool.imap if ordered else pool.imap_unordered)(plus_one, range(items), chunksize)
        count = total = 0
        for r in results:
            count += 1
            total += r
        seconds = time.perf_counter() - start
    if count != items or total != items * (items + 1) // 2:
        sys.exit("python_peer: Pool.imap returned wrong results")
    return seconds


def pool_scenarios(a):
    """Issue 12's Pool lines: imap of 1M items in chunks of 1000, imap_unordered of 100k tasks."""
    imap_items = a.items * 10
    for scenario, items, chunksize, ordered in (
            ("Pool.imap 1M items", imap_items, 1000, True),
            ("Pool.imap_unordered 100k", a.items, 1, False)):
        seconds = statistics.median(pool_imap(items, chunksize, ordered) for _ in range(a.reps))
        print(json.dumps({"scenario": scenario, "seconds": seconds}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--round-trips", type=int, default=20000)
    ap.add_argument("--items", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only-pool", action="store_true", help="only the Pool scenarios of issue 12")
    a = ap.parse_args()
    mp.set_start_method("fork")
    if a.only_pool:
        pool_scenarios(a)
        return
    for size in (8, 4096):
        n = a.n if size == 8 else max(a.n // 4, 100)
        rate = statistics.median(throughput(n, size) for _ in range(a.reps))
        print(json.dumps({"scenario": "1->1 %d B" % size, "msgs_per_s": rate}), flush=True)
    p50s, p99s = zip(*(round_trips(a.round_trips) for _ in range(a.reps)))
    print(json.dumps({"scenario": "round trip 8 B", "p50_us": statistics.median(p50s),
                      "p99_us": statistics.median(p99s)}), flush=True)
    p50s, p99s = zip(*(pipe_round_trips(a.round_trips) for _ in range(a.reps)))
    print(json.dumps({"scenario": "round trip 8 B, Pipe and wait", "p50_us": statistics.median(p50s),
                      "p99_us": statistics.median(p99s)}), flush=True)
    seconds = statistics.median(pool_map(a.items) for _ in range(a.reps))
    print(json.dumps({"scenario": "Pool.map 100k tasks", "seconds": seconds}), flush=True)
    pool_scenarios(a)


if __name__ == "__main__":
    main()
