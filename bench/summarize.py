#!/usr/bin/env python3
"""Medians across several full runs of shmq_bench, as the README's benchmark tables.

    for i in $(seq 10); do ./build/bench/shmq_bench --json > run$i.json; done
    bench/summarize.py run*.json

Each run already reports medians of its repetitions. This prints, for every scenario and peer, the
median of those across runs, with the shmq/peer ratio taken within each run (so a run that was
slow for everybody moves no ratio) and then its median; and a table of the issue's targets with
the median, the range and how many runs met each.
"""
import json
import statistics
import sys

PEERS = [
    "boost::interprocess::message_queue",
    "POSIX mq",
    "pipe",
    "naive mutex+condvar ring",
    "lock-free SPSC spinning ring",
    "Python multiprocessing",
]
ROWS = [  # scenario in the JSON, label in the table
    ("1->1 8 B", "1→1, 8 B"),
    ("1->1 64 B", "1→1, 64 B"),
    ("1->1 256 B", "1→1, 256 B"),
    ("1->1 4096 B", "1→1, 4 KiB"),
    ("1->1 65536 B", "1→1, 64 KiB"),
    ("1->1 8 B, batches", "1→1, 8 B, `put_many`/`get_many`"),
    ("4->4 8 B", "4→4, 8 B"),
    ("round trip 8 B", "round trip, 8 B, p50 / p99"),
    ("Pool.map 100k tasks", "`Pool(2).map` of 100,000 trivial tasks"),
]
MEMCPY = ["memcpy, one core, hot in L1/L2", "memcpy, one core, through 1 MiB"]
# (label, scenario, peer, minimum of shmq ÷ peer; for latency and time, peer ÷ shmq)
TARGETS = [
    ("1→1 8 B vs Boost", "1->1 8 B", PEERS[0], 2),
    ("1→1 8 B vs pipe", "1->1 8 B", "pipe", 5),
    ("1→1 8 B vs POSIX mq", "1->1 8 B", "POSIX mq", 8),
    ("1→1 4 KiB vs Boost", "1->1 4096 B", PEERS[0], 1.5),
    ("1→1 64 KiB vs Boost", "1->1 65536 B", PEERS[0], 1.5),
    ("1→1 64 KiB vs one core's memcpy, hot in L1/L2", "1->1 65536 B", MEMCPY[0], 0.5),
    ("1→1 64 KiB vs one core's memcpy through 1 MiB", "1->1 65536 B", MEMCPY[1], 0.5),
    ("batches vs the lock-free SPSC ring", "1->1 8 B, batches", PEERS[4], 0.5),
    ("4→4 8 B vs Boost", "4->4 8 B", PEERS[0], 2),
    ("round trip p50 vs Boost", "round trip 8 B", PEERS[0], 10),
    # Round two (issues 13, 15, 17); a fifth field names the shmq line when it is not the first.
    ("1→1 8 B vs the lock-free SPSC ring", "1->1 8 B", PEERS[4], 0.5),
    ("4→4 8 B vs Boost (round two)", "4->4 8 B", PEERS[0], 5),
    ("256 B std::string, get() vs Boost", "1->1 256 B std::string", PEERS[0], 2,
     "shmq Queue<std::string> get()"),
    ("256 B std::string, get(out) vs Boost", "1->1 256 B std::string", PEERS[0], 2,
     "shmq Queue<std::string> get(out)"),
    ("leased 8 B vs plain get", "1->1 8 B, leased", "shmq get", 0.5, "shmq get_leased+ack"),
    ("leased 4 KiB vs plain get", "1->1 4096 B, leased", "shmq get", 0.7, "shmq get_leased+ack"),
    ("Pipe round trip vs Queue (within 1.5×)", "round trip 8 B, Pipe and wait",
     "shmq Queue put/get", 1 / 1.5, "shmq Pipe send/recv"),
    ("wait() on 16 queues vs Queue (within 2×)", "round trip 8 B, Pipe and wait",
     "shmq Queue put/get", 0.5, "shmq wait() on 16 queues"),
    ("Notifier + epoll vs pipe + epoll", "round trip 8 B, Pipe and wait", "pipe + epoll", 1,
     "shmq Notifier + epoll"),
] + [
    (f"iceoryx 1→1 {size} B, put/get vs {mode}", f"iceoryx 1->1 {size} B",
     f"iceoryx loan+publish, {mode}", 1, "shmq put/get")
    for size in (8, 256, 4096) for mode in ("WaitSet", "busy poll")
] + [
    (f"iceoryx 1→1 65536 B, put_with/get_with vs {mode}", "iceoryx 1->1 65536 B",
     f"iceoryx loan+publish, {mode}", 0.7, "shmq put_with/get_with")
    for mode in ("WaitSet", "busy poll")
] + [
    (f"iceoryx round trip p50 {size} B, {line} vs {mode}", f"iceoryx round trip {size} B",
     f"iceoryx loan+publish, {mode}", 1, f"shmq {line}")
    for size in (8, 256, 4096, 65536) for mode in ("WaitSet", "busy poll")
    for line in ("put/get", "put_with/get_with")
]


def load(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append({(r["scenario"], r["peer"]): r for r in json.load(f)})
    return runs


def shmq_peer(run, scenario):
    """The shmq line of a scenario (the batch and Pool scenarios name theirs differently)."""
    for (s, p) in run:
        if s == scenario and p.startswith("shmq"):
            return p
    return None


def figure(r):
    """The figure a result is judged by, and whether higher is better."""
    if r["p50_us"] > 0:
        return r["p50_us"], False
    if r["seconds"] > 0:
        return r["seconds"], False
    return r["msgs_per_s"], True


def ratio(run, scenario, peer, line=None):
    mine = run.get((scenario, line or shmq_peer(run, scenario)))
    other = run.get((scenario, peer))
    if mine is None or other is None:
        return None
    (a, higher), (b, _) = figure(mine), figure(other)
    return a / b if higher else b / a


def across(runs, scenario, peer, key):
    values = [run[(scenario, peer)][key] for run in runs if (scenario, peer) in run]
    return statistics.median(values) if values else None


def rate(v):
    return f"{v / 1e6:.3g}M" if v >= 1e6 else f"{v / 1e6:.2g}M"


def times(x):
    return f"{x:.0f}×" if x >= 100 else f"{x:.2g}×"


def ratios(runs, scenario, peer, line=None):
    return [x for x in (ratio(run, scenario, peer, line) for run in runs) if x is not None]


def cell(runs, scenario, peer, with_ratio=True):
    if not any((scenario, peer) in run for run in runs):
        return ""
    sample = next(run[(scenario, peer)] for run in runs if (scenario, peer) in run)
    if sample["p50_us"] > 0:
        text = f"{across(runs, scenario, peer, 'p50_us'):.3g} / {across(runs, scenario, peer, 'p99_us'):.3g} µs"
    elif sample["seconds"] > 0:
        text = f"{across(runs, scenario, peer, 'seconds') * 1000:.2g} ms"
    else:
        text = rate(across(runs, scenario, peer, "msgs_per_s"))
        if scenario in ("1->1 4096 B", "1->1 65536 B") and sample["mb_per_s"] > 0:
            text += f" = {across(runs, scenario, peer, 'mb_per_s') / 1000:.1f} GB/s"
    r = ratios(runs, scenario, peer)
    if with_ratio and r:
        text += f" ({times(statistics.median(r))})"
    return text


def main(paths):
    runs = load(paths)
    print(f"Medians of {len(runs)} full runs; ratio = shmq ÷ peer (peer ÷ shmq for latency and time), "
          "the median of the per-run ratios.\n")
    print("| scenario | shmq | " + " | ".join(["Boost message_queue", "POSIX mq", "pipe",
                                               "naive mutex+condvar ring", "lock-free SPSC spin ring",
                                               "Python multiprocessing"]) + " |")
    print("|---" * (2 + len(PEERS)) + "|")
    for scenario, label in ROWS:
        mine = next((shmq_peer(run, scenario) for run in runs if shmq_peer(run, scenario)), None)
        if mine is None:
            continue
        cells = [cell(runs, scenario, p) for p in PEERS]
        print(f"| {label} | {cell(runs, scenario, mine, False)} | " + " | ".join(cells) + " |")
    print("\nOne core's memcpy of the same 64 KiB messages, measured alternately with the peers:\n")
    for peer in MEMCPY:
        print(f"- {peer}: {cell(runs, '1->1 65536 B', peer)}")
    print("\n| target | at least | median | range | runs that met it |")
    print("|---|---|---|---|---|")
    for label, scenario, peer, minimum, *line in TARGETS:
        r = ratios(runs, scenario, peer, *line)
        if not r:
            continue
        met = sum(x >= minimum for x in r)
        print(f"| {label} | {minimum:g}× | {statistics.median(r):.2f}× | {min(r):.2f}–{max(r):.2f}× | "
              f"{met} of {len(r)} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
