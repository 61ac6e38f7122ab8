"""shmq's Python module beside multiprocessing.Queue, in one run, on the scenarios of issue 16:

  1->1 small objects (an int), throughput       round trip p50/p99 of an int (put, echo, get)
  1->1 4 KiB bytes, throughput                   4 producers x 4 consumers of ints, throughput

Round trips run with both processes pinned to one core, pinned to two, and unpinned: a
round trip costs what the two processes' placement allows (two context switches per round trip
on one core), and an unpinned pair lands in either placement by chance, so the same placement is
given to both queues.

Every run is verified (count and checksum). Prints one line per scenario with both medians of
--reps runs and the ratio, then the same as JSON lines (--json). Run from the top of the tree
after building (it adds build/python to sys.path), or with the module installed:

    python3 bench/python_module_peer.py [--reps 5] [--n 200000]
"""
import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "python"))
import shmq  # noqa: E402
from python_peer import round_trips  # noqa: E402  (the same loop as multiprocessing's figures)

QUEUES = {"mp.Queue": mp.Queue, "shmq.Queue": shmq.Queue}


def produce(q, go, first, n, size):
    """Puts ints first..first+n-1, or bytes of `size` that start with them (8 bytes)."""
    filler = b"\x5a" * (size - 8) if size else None
    go.wait()
    if filler is None:
        for i in range(first, first + n):
            q.put(i)
    else:
        for i in range(first, first + n):
            q.put(i.to_bytes(8, "little") + filler)
    q.put(None)


def consume(q, out):
    count = total = 0
    while True:
        m = q.get()
        if m is None:
            break
        count += 1
        total += m if isinstance(m, int) else int.from_bytes(m[:8], "little")
    out.put((count, total, time.perf_counter()))


def throughput(make, n, size, producers=1, consumers=1):
    """Messages per second from `producers` processes to `consumers` processes, from the moment
    every process has started until the last consumer has its last message (perf_counter is
    CLOCK_MONOTONIC, one clock for every process)."""
    assert producers == consumers  # each producer's None stops one consumer
    q, out, go = make(), make(), mp.Event()
    share = n // producers
    procs = [mp.Process(target=consume, args=(q, out)) for _ in range(consumers)]
    procs += [mp.Process(target=produce, args=(q, go, k * share, share, size))
              for k in range(producers)]
    for p in procs:
        p.start()
    start = time.perf_counter()
    go.set()
    results = [out.get() for _ in range(consumers)]
    for p in procs:
        p.join()
    seconds = max(end for _, _, end in results) - start
    total_n = share * producers
    if (sum(c for c, _, _ in results) != total_n
            or sum(t for _, t, _ in results) != total_n * (total_n - 1) // 2):
        sys.exit("python_module_peer: lost or corrupted messages")
    return total_n / seconds


def placements():
    """Where the two processes of a round trip run: (title, (this process's CPU, the echo's))."""
    cpus = sorted(os.sched_getaffinity(0))
    both = [("one core", (cpus[0], cpus[0]))]
    if len(cpus) > 1:
        both.append(("two cores", (cpus[0], cpus[1])))
    return both + [("unpinned", (None, None))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=200_000, help="messages per throughput run")
    ap.add_argument("--round-trips", type=int, default=5_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    mp.set_start_method("fork")

    # (titles, run, higher_is_better): run(make) returns one value per title.
    scenarios = [
        (["1->1 small objects, msgs/s"], lambda make: [throughput(make, args.n, 0)], True),
        (["1->1 4 KiB bytes, msgs/s"], lambda make: [throughput(make, args.n // 4, 4096)], True),
        (["4x4 small objects, msgs/s"], lambda make: [throughput(make, args.n, 0, 4, 4)], True),
    ]
    for where, cpus in placements():  # both queues in the same placement, in each run
        scenarios.append(([f"round trip p50, us, {where}", f"round trip p99, us, {where}"],
                          lambda make, cpus=cpus: round_trips(args.round_trips, make, cpus),
                          False))
    print(f"medians of {args.reps} runs, interleaved; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'scenario':36} {'mp.Queue':>12} {'shmq.Queue':>12} {'ratio':>9}")
    rows = []
    for titles, run, higher_is_better in scenarios:
        samples = [{name: [] for name in QUEUES} for _ in titles]
        for _ in range(args.reps):  # interleaved, so drift in the machine's load hits both
            for name, make in QUEUES.items():
                for per_title, value in zip(samples, run(make)):
                    per_title[name].append(value)
        for title, per_title in zip(titles, samples):
            mp_med = statistics.median(per_title["mp.Queue"])
            shmq_med = statistics.median(per_title["shmq.Queue"])
            ratio = shmq_med / mp_med if higher_is_better else mp_med / shmq_med
            print(f"{title:36} {mp_med:12.1f} {shmq_med:12.1f} {ratio:8.1f}x", flush=True)
            rows.append({"scenario": title, "mp_queue": mp_med, "shmq": shmq_med,
                         "shmq_advantage": ratio, "samples": per_title})
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
