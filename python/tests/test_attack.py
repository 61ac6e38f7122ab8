"""Hostile use: processes SIGKILLed inside put and get, lying headers, closed and huge queues,
fork while another thread is blocked in a get."""

import mmap
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import shmq
from conftest import peer

fork = mp.get_context("fork")


def message(i):
    """Message i: its number and a payload whose every byte and length derive from it."""
    return (i, bytes([i % 251]) * (i * 37 % 6000))


def intact(m):
    i, payload = m
    return payload == message(i)[1]


def _produce_forever(q, start):
    i = start
    while True:
        q.put(message(i))
        i += 1


def _consume_forever(q):
    while True:
        q.get()


def test_a_producer_killed_at_random_points_leaves_only_whole_messages():
    rng = random.Random(16)
    q = shmq.Queue(capacity_bytes=64 << 10)
    last = -1
    for round_ in range(25):
        p = fork.Process(target=_produce_forever, args=(q, round_ * 1_000_000))
        p.start()
        deadline = time.monotonic() + rng.uniform(0.001, 0.03)
        while time.monotonic() < deadline:  # keep it running: drain while it puts
            try:
                m = q.get(timeout=0.001)
            except shmq.Empty:
                continue
            assert intact(m) and m[0] > last
            last = m[0]
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        while True:
            try:
                m = q.get_nowait()
            except shmq.Empty:
                break
            assert intact(m) and m[0] > last
            last = m[0]
    q.put("still works")
    assert q.get(timeout=5) == "still works"


def test_a_consumer_killed_at_random_points_never_wedges_the_queue():
    rng = random.Random(61)
    q = shmq.Queue(capacity_bytes=64 << 10)
    i = 0
    for _ in range(25):
        c = fork.Process(target=_consume_forever, args=(q,))
        c.start()
        deadline = time.monotonic() + rng.uniform(0.001, 0.03)
        while time.monotonic() < deadline:
            try:
                q.put(message(i), timeout=0.001)
                i += 1
            except shmq.Full:
                pass
        os.kill(c.pid, signal.SIGKILL)
        c.join()
    # What the dead consumers left is whole and in order, and the queue goes on working.
    left = []
    while True:
        try:
            left.append(q.get_nowait())
        except shmq.Empty:
            break
    assert all(intact(m) for m in left)
    assert [m[0] for m in left] == sorted(m[0] for m in left)
    q.put("still works")
    assert q.get(timeout=5) == "still works"
    assert q.stats()["sleeping_consumers"] <= 1


def _block_in_get(q, ready):
    ready.put("about to block")
    q.get()


def test_a_consumer_killed_while_asleep_in_get_leaves_the_queue_working():
    q = shmq.Queue()
    ready = shmq.Queue()
    c = fork.Process(target=_block_in_get, args=(q, ready))
    c.start()
    ready.get(timeout=10)
    time.sleep(0.05)  # into its futex sleep (no signal exists for "now asleep")
    os.kill(c.pid, signal.SIGKILL)
    c.join()
    q.put(1)
    assert q.get(timeout=5) == 1


def _header_type_name(name, text):
    """Overwrites the type name a named queue's header records (offset 64, 256 bytes)."""
    with open(f"/dev/shm/shmq.{name}", "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        m[64:64 + 256] = text.ljust(256, b"\0")[:256]


@pytest.mark.parametrize("text", [
    b"long",                                    # a plain lie: the fingerprint is a pickle's
    b"std::vector<" * 40,                        # unbalanced and deep
    b"std::map<std::string, " * 30,              # cut inside arguments it needs
    bytes(range(1, 256)) + b"x",                 # no NUL, not text
    b"std::array<char, 99999999999999999999>",   # absurd length
    b"std::tuple<" + b"long, " * 60 + b"long>",  # long but valid-looking
    b"",
])
def test_a_header_with_a_hostile_type_name_is_refused_at_open(qname, text):
    name = qname()
    shmq.Queue.create(name)
    _header_type_name(name, text)
    with pytest.raises(shmq.Incompatible, match=f"queue '{name}'"):
        shmq.Queue.open(name)


def _use_in_child(q, other, out):
    q.put("from the child")
    out.put(other.get(timeout=10))


def test_fork_while_another_thread_is_blocked_in_get():
    q, other, out = shmq.Queue(), shmq.Queue(), shmq.Queue()
    other.put("waiting for the child")
    got = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    time.sleep(0.1)  # the thread is in get, without the GIL
    p = fork.Process(target=_use_in_child, args=(q, other, out))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert out.get(timeout=10) == "waiting for the child"
    t.join(10)
    assert got == ["from the child"]


def test_sizes_out_of_range_are_refused():
    with pytest.raises(shmq.InvalidArgument):
        shmq.Queue(capacity_bytes=(1 << 30) + 1)
    with pytest.raises(shmq.InvalidArgument):
        shmq.Queue(2**40)
    with pytest.raises((OverflowError, TypeError)):
        shmq.Queue(capacity_bytes=-1)


def test_hostile_bytes_in_a_queue_of_python_objects_raise_and_are_dropped_one_by_one(qname):
    name = qname()
    q = shmq.Queue.create(name)
    hostile = ["", "69" + "01", "66" + "00" * 9, "3f", "6e00", "54ff", "80ffffff", "73ff"]  # see object_codec.hpp
    good = "69" + (42).to_bytes(8, "little").hex()
    r = subprocess.run([peer(), "raw", name, *hostile, good], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for _ in hostile:
        with pytest.raises(shmq.DecodeError):
            q.get_nowait()
    assert q.get_nowait() == 42
    assert q.empty()


@pytest.mark.parametrize("spelling, valid", [
    ("std::vector<std::string>", ["a", ""]),
    ("std::map<std::int32_t, std::optional<double>>", {1: None, -2: 0.5}),
    ("std::tuple<bool, std::array<std::uint8_t, 3>, std::vector<std::vector<std::int16_t>>>",
     (True, b"abc", [[1], []])),
    ("std::unordered_map<std::string, std::pair<char, std::vector<std::byte>>>",
     {"k": (7, b"\x00")}),
])
def test_random_bytes_in_a_typed_queue_decode_or_raise_decode_error(qname, spelling, valid):
    rng = random.Random(spelling)
    name = qname()
    q = shmq.Queue.create(name, type=spelling)
    messages = []
    for _ in range(300):
        n = rng.choice([0, 1, 2, 4, 5, 8, 9, 16, 33, 64])
        # Small counts and lengths now and then, so that decoding gets past the first field.
        raw = bytes(rng.choice([0, 1, 2, 3, 255, rng.randrange(256)]) for _ in range(n))
        messages.append(raw.hex())
    r = subprocess.run([peer(), "raw", name, *messages], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for _ in messages:  # each decodes (random bytes can be valid) or raises; none crashes
        try:
            q.get_nowait()
        except shmq.DecodeError:
            pass
    assert q.empty()
    q.put(valid)
    assert q.get_nowait() == valid


_EXIT_WITH_BLOCKED_THREADS = """
import threading, time, shmq
q, full, tasks = shmq.Queue(), shmq.Queue(1), shmq.JoinableQueue()
full.put(0)
tasks.put(0)
calls = [q.get, lambda: q.get_many(5), lambda: full.put(1), tasks.join]
blocked = threading.Barrier(33)
def run(call):
    blocked.wait()
    call()
for i in range(32):
    threading.Thread(target=run, args=(calls[i % 4],), daemon=True).start()
blocked.wait()
time.sleep(0.1)  # let them reach their waits (nothing tells when a thread sleeps)
"""


def test_the_interpreter_exits_cleanly_with_daemon_threads_blocked_in_every_wait():
    # A daemon thread that takes the GIL back during finalization is ended by pthread_exit; its
    # forced unwinding through a C++ GIL guard used to abort the process (exit status -6).
    for _ in range(20):
        r = subprocess.run([sys.executable, "-c", _EXIT_WITH_BLOCKED_THREADS],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


# A daemon thread that finalization catches waiting for the GIL, on its way out of a get: the
# main thread holds the GIL from the moment the message arrives (a forked child puts it) until
# finalization, whose first release of the GIL (a __del__ that sleeps) hands it to the waiting
# thread, which CPython then ends with pthread_exit from inside the get.
_EXIT_WHILE_A_GET_WAITS_FOR_THE_GIL = """
import ctypes, os, sys, threading, time, shmq

FUTEX = %d
libc = ctypes.PyDLL(None)  # a PyDLL's calls keep the GIL
libc.open.argtypes = [ctypes.c_char_p, ctypes.c_int]

def syscall_of(thread):
    # The number of the system call `thread` is blocked in, or None (running).
    fd = libc.open(f"/proc/self/task/{thread.native_id}/syscall".encode(), os.O_RDONLY)
    buf = ctypes.create_string_buffer(128)
    n = libc.read(fd, buf, 127)
    libc.close(fd)
    first = buf.raw[:max(n, 0)].split()[:1]
    return int(first[0]) if first and first[0].isdigit() else None

class GivesUpTheGilInFinalization:
    def __del__(self, sleep=time.sleep):
        sleep(0.05)

sys.setswitchinterval(1000)  # a thread waiting for the GIL never makes this one give it up
q, go = shmq.Queue(), shmq.Queue()
getter = threading.Thread(target=q.get, daemon=True)
getter.start()
while q.stats()["sleeping_consumers"] == 0:  # asleep in the ring's wait, without the GIL
    time.sleep(0.001)
if os.fork() == 0:
    go.get()
    q.put(1)
    os._exit(0)
go.put(0)  # from here on this thread keeps the GIL until finalization releases it
while q.stats()["gets"] == 0:
    pass
while syscall_of(getter) != FUTEX:  # the getter has the message and waits for the GIL
    pass
keeper = GivesUpTheGilInFinalization()  # released in finalization, after this line
"""


def test_a_daemon_thread_that_finalization_ends_inside_a_get_exits_cleanly():
    # Without the GIL guard's noexcept(false) the process aborts ("terminate called without an
    # active exception"); without the method wrapper rethrowing abi::__forced_unwind it crashes.
    futex = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)
    if futex is None:
        pytest.skip("the futex system call's number is known for x86_64 and aarch64 only")
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", _EXIT_WHILE_A_GET_WAITS_FOR_THE_GIL % futex],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr)


def _hold(name, side):
    """The C++ peer holding the producers' (put) or consumers' (get) lock of queue `name` until
    its stdin closes; killed after 20 s whatever happens, so that a test whose call waits for
    that lock holding the GIL fails instead of hanging (the kill frees the robust lock)."""
    holder = subprocess.Popen(["timeout", "-s", "KILL", "20", peer(), "hold", name, side],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    return holder


_WAITING_CALLS = {
    "put": lambda q: q.put("second"),
    "put_timeout": lambda q: q.put("second", timeout=30),
    "put_many": lambda q: q.put_many(["second"]),
    "get": lambda q: q.get(),
    "get_timeout": lambda q: q.get(timeout=30),
    "get_many_1": lambda q: q.get_many(1)[0],
}


@pytest.mark.parametrize("call", _WAITING_CALLS)
def test_a_call_that_finds_the_lock_held_by_another_process_waits_without_the_gil(qname, call):
    # A put or get first tries once holding the GIL; one that found the lock held and then waited
    # for it still holding the GIL would stop every thread of this process until the holder let go.
    name = qname()
    q = shmq.Queue.create(name)
    q.put("queued")  # the holder's get leaves it queued
    other = shmq.Queue()
    holder = _hold(name, "put" if call.startswith("put") else "get")
    result = []
    t = threading.Thread(target=lambda: result.append(_WAITING_CALLS[call](q)))
    try:
        t.start()
        start = time.monotonic()
        for i in range(2000):  # Python work on this thread, while the other waits for the lock
            other.put(i)
            assert other.get() == i
        took = time.monotonic() - start
        assert t.is_alive(), "the call did not wait for the lock"
    finally:
        holder.stdin.close()
        assert holder.wait(30) == 0, "the holder was killed: the call kept this thread waiting"
    t.join(10)
    assert not t.is_alive()
    assert took < 5
    if call.startswith("put"):
        assert result == [None] and q.get_many(10) == ["queued", "second"]
    else:
        assert result == ["queued"] and q.empty()


@pytest.mark.parametrize("call, error", [
    (lambda q: q.put_nowait(1), shmq.Full), (lambda q: q.put(1, timeout=0.2), shmq.Full),
    (lambda q: q.get_nowait(), shmq.Empty), (lambda q: q.get(timeout=0.2), shmq.Empty)])
def test_a_call_that_may_not_wait_long_gives_up_on_a_lock_held_by_another_process(qname, call,
                                                                                  error):
    name = qname()
    q = shmq.Queue.create(name)
    q.put("queued")
    holder = _hold(name, "put" if error is shmq.Full else "get")
    try:
        start = time.monotonic()
        with pytest.raises(error):
            call(q)
        assert time.monotonic() - start < 5
    finally:
        holder.stdin.close()
        assert holder.wait(30) == 0
    assert q.get_nowait() == "queued"


_NO_MEMORY_FOR_THE_GET = r"""
import resource, sys
import shmq
size = 48 << 20
q = shmq.Queue(capacity_bytes=64 << 20)
q.put(bytes(size))
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm + (16 << 20), hard))
for get in (q.get_nowait, q.get):
    try:
        get()
        sys.exit("the get had room for the message after all")
    except MemoryError:
        pass
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
assert q.qsize() == 1, "the message was lost"
m = q.get_nowait()
assert len(m) == size and not any(m), "the message changed"
print("kept")
"""


def test_a_get_with_no_memory_for_the_message_raises_memory_error_and_leaves_it_queued():
    r = subprocess.run([sys.executable, "-c", _NO_MEMORY_FOR_THE_GET], capture_output=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0 and r.stdout == b"kept\n", r.stderr.decode()



_LITTLE_MEMORY_CONSUMER = """
import resource, shmq
q = shmq.Queue(capacity_bytes=96 << 20)
q.put(b"small")
q.put(b"x" * (48 << 20))
with open("/proc/self/status") as status:
    vm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, ((vm_kib << 10) + (16 << 20), hard))
outcomes = []
for _ in range(2):
    try:
        outcomes.append([len(m) for m in q.get_many(2, timeout=5)])
    except MemoryError:
        outcomes.append("MemoryError")
try:  # a single get builds the bytes straight from the ring, at once
    outcomes.append(len(q.get(timeout=5)))
except MemoryError:
    outcomes.append("MemoryError")
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
outcomes.append(len(q.get(timeout=5)))
print(outcomes)
"""


def test_get_many_out_of_memory_on_a_later_message_loses_none_taken_before_it():
    # A fresh interpreter under RLIMIT_AS, so that no free heap left by earlier tests holds the
    # big message's copy.
    out = subprocess.run([sys.executable, "-c", _LITTLE_MEMORY_CONSUMER], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # The small message comes back; the big one, which the process cannot copy, stays queued.
    assert out.stdout.strip() == str([[5], "MemoryError", "MemoryError", 48 << 20])


_NO_MEMORY_TO_DECODE = """
import resource, shmq
q = shmq.Queue(capacity_bytes=64 << 20)
q.put(("x" * (24 << 20),))  # a pickle: copied out of the queue, then decoded
q.put("next")
with open("/proc/self/status") as status:
    vm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, ((vm_kib << 10) + (36 << 20), hard))
try:
    q.get(timeout=5)
    print("decoded")
except MemoryError as e:
    print("lost" if "out of memory decoding a message" in str(e) and "is lost" in str(e) else e)
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
print(q.get(timeout=5))
"""


def test_a_message_that_runs_out_of_memory_decoding_is_reported_lost_as_memory_error():
    # The copy out of the queue fits under the limit, the object built from it does not: the
    # error is MemoryError, saying the message is lost (not a DecodeError blaming the pickle),
    # and the next message comes next.
    out = subprocess.run([sys.executable, "-c", _NO_MEMORY_TO_DECODE], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lost", "next"], out.stdout + out.stderr
