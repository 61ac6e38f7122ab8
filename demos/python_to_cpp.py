"""A Python program feeding a C++ worker through a shmq queue (C++ side: python_to_cpp.cpp).

Python makes the queue, as the C++ worker will read it: shmq::Queue<std::map<std::string,
double>>. Each job is a dict; the worker prints each job's total and ends when Python shuts the
queue down after the last job.

    python3 demos/python_to_cpp.py [path/to/build/demos/python_to_cpp]
"""
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "build", "python"))  # the module in the build tree
import shmq  # noqa: E402

worker = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "build", "demos", "python_to_cpp")
name = f"demo_python_to_cpp.{os.getpid()}"

jobs = shmq.Queue.create(name, 100, type="std::map<std::string, double>")
try:
    cpp = subprocess.Popen([worker, name])
    for n in range(1, 4):
        jobs.put({"apples": n * 1.5, "pears": n * 0.25})  # a dict is a std::map here
    jobs.shutdown()  # the worker drains the queue, then its get throws shmq::ShutDown
    sys.exit(cpp.wait())
finally:
    shmq.Queue.remove(name)
