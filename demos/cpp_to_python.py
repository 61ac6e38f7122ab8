"""A Python program reading what a C++ program puts (C++ side: cpp_to_python.cpp).

The C++ producer makes shmq::Queue<std::tuple<std::int64_t, std::string, std::vector<double>>>;
Python opens it by name alone and gets Python tuples (int, str, list of float).

    python3 demos/cpp_to_python.py [path/to/build/demos/cpp_to_python]
"""
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "build", "python"))  # the module in the build tree
import shmq  # noqa: E402

producer = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "build", "demos", "cpp_to_python")
name = f"demo_cpp_to_python.{os.getpid()}"

cpp = subprocess.Popen([producer, name], stdout=subprocess.PIPE, text=True)
try:
    assert cpp.stdout.readline() == "ready\n"
    readings = shmq.Queue.open(name)  # the type comes from the queue's header
    print(f"Python: {name} holds {readings.cpp_type}")
    try:
        while True:
            number, instrument, values = readings.get(timeout=30)
            print(f"Python: reading {number} from the {instrument}: {values}")
    except shmq.ShutDown:
        print("Python: the C++ producer is done")
finally:
    cpp.wait()
    shmq.Queue.remove(name)
