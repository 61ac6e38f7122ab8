"""Queues shared with C++ (python/tests/cpp_peer.cpp): types named, mangled and encoded as the
C++ codec does, in both directions."""

import subprocess

import pytest

import shmq
from conftest import peer


def run_peer(*args, check=True):
    r = subprocess.run([peer(), *map(str, args)], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def peer_types():
    return [line.split("\t") for line in run_peer("types").stdout.splitlines()]


def test_every_type_mangles_to_what_typeid_gives():
    types = peer_types()
    assert len(types) >= 16
    for spelling, mangled in types:
        assert shmq._shmq._mangle(spelling) == mangled, spelling


def test_a_cpp_queue_opens_from_its_header_and_round_trips_every_type(qname):
    for spelling, _ in peer_types():
        made_by_cpp, made_by_python = qname(), qname()
        run_peer("fill", spelling, made_by_cpp)
        q = shmq.Queue.open(made_by_cpp)  # no type=: read from the queue's own record
        assert q.cpp_type == spelling
        values = []
        while not q.empty():
            values.append(q.get_nowait())
        back = shmq.Queue.create(made_by_python, type=spelling)
        back.put_many(values)
        run_peer("check", spelling, made_by_python)  # C++ decodes exactly its samples


def test_values_decode_natively(qname):
    expected = {
        "std::string": ["", "hello", "消息1", "x" * 5000],
        "std::int64_t": [0, -1, -2**63, 2**63 - 1],
        "std::uint64_t": [0, 2**64 - 1],
        "double": [0.0, -2.5, 1e300],
        "bool": [True, False],
        "std::vector<std::int64_t>": [[], [1, 2, 3], [7] * 1000],
        "std::map<std::string, double>": [{}, {"apple": 1.5, "pear": -0.25}],
        "std::tuple<std::int64_t, std::string, double>": [(1, "one", 1.0), (-7, "", 0.5)],
        "std::pair<std::int32_t, float>": [(1, 2.5), (-3, 0.0)],
        "std::vector<std::uint8_t>": [b"", b"\x00\xff\n"],
        "std::vector<std::byte>": [b"\x01\xc8"],
        "std::optional<std::string>": [None, "x"],
        "std::array<std::int16_t, 3>": [[1, -2, 3]],
        "std::unordered_map<std::int64_t, std::vector<std::string>>": [{5: ["a", "b"], -1: []}],
        "std::map<std::vector<std::int32_t>, std::string>": [{(): "empty", (1, 2): "a"}],
        "std::vector<std::map<std::string, std::vector<double>>>": [[{"x": [1.0, 2.0]}, {}]],
    }
    for spelling, values in expected.items():
        name = qname()
        run_peer("fill", spelling, name)
        q = shmq.Queue.open(name, type=spelling)
        assert [q.get_nowait() for _ in values] == values, spelling
        assert q.empty()


def test_python_puts_and_cpp_echoes_back(qname):
    for spelling, values in [
        ("std::int64_t", list(range(-500, 500))),
        ("std::vector<std::map<std::string, std::vector<double>>>",
         [[{"k": [float(j) for j in range(i)]}] * (i % 3) for i in range(50)]),
    ]:
        qin = shmq.Queue.create(qname(), type=spelling)
        qout = shmq.Queue.create(qname(), type=spelling)
        qin.put_many(values)
        run_peer("echo", spelling, qin.name, qout.name, len(values))
        assert qout.get_many(len(values)) == values


def test_python_types_are_shorthands_for_cpp_types():
    assert shmq.Queue(type=str).cpp_type == "std::string"
    assert shmq.Queue(type=int).cpp_type == "std::int64_t"
    assert shmq.Queue(type=float).cpp_type == "double"
    assert shmq.Queue(type=bytes).cpp_type == "std::vector<std::uint8_t>"
    assert shmq.Queue(type="std::vector<long>").cpp_type == "std::vector<std::int64_t>"
    with pytest.raises(shmq.InvalidArgument):
        shmq.Queue(type="std::vector<Point>")
    with pytest.raises(shmq.InvalidArgument):
        shmq.Queue(type="std::vector<long")
    with pytest.raises(shmq.InvalidArgument):
        shmq.Queue(type=list)


def test_a_type_mismatch_is_refused_at_open_in_both_languages(qname):
    name = qname()
    run_peer("fill", "std::int64_t", name)
    with pytest.raises(shmq.Incompatible) as e:
        shmq.Queue.open(name, type="double")
    assert "long" in str(e.value) and "double" in str(e.value)
    pickles = qname()
    shmq.Queue.create(pickles)
    r = run_peer("check", "std::string", pickles, check=False)
    assert r.returncode == 3 and "shmq::python::PythonObject" in r.stderr


def test_values_without_a_cpp_encoding_raise_in_put_and_write_nothing():
    cases = [
        ("std::int32_t", 2**31), ("std::uint64_t", -1), ("std::int64_t", 1.5), ("std::int64_t", "1"),
        ("double", "x"), ("bool", 1), ("std::string", 5), ("std::vector<std::int64_t>", "abc"),
        ("std::vector<std::int64_t>", [1, "2"]), ("std::array<std::int16_t, 3>", [1, 2]),
        ("std::pair<std::int32_t, float>", (1,)), ("std::map<std::string, double>", [1]),
        ("std::vector<std::uint8_t>", "text"), ("std::string", "\udcff"),
    ]
    for spelling, value in cases:
        q = shmq.Queue(type=spelling)
        with pytest.raises((TypeError, ValueError, OverflowError)):
            q.put(value)
        assert q.qsize() == 0, (spelling, value)


def test_a_cpp_message_that_does_not_decode_raises_and_only_it_is_dropped(qname):
    name = qname()
    q = shmq.Queue.create(name, type="std::vector<std::int64_t>")
    run_peer("bad", name)
    assert q.get_nowait() == [1]
    for _ in range(2):
        with pytest.raises(shmq.DecodeError):
            q.get_nowait()
    assert q.get_nowait() == [2]
    s = shmq.Queue(type=str)
    s.put(b"\xff\xfe")  # bytes are accepted for std::string; this is not UTF-8
    s.put("ok")
    with pytest.raises(shmq.DecodeError, match="not UTF-8"):
        s.get()
    assert s.get() == "ok"
