// The C++ worker that demos/python_to_cpp.py feeds: it opens the queue the Python program made,
// as the type Python made it with, and prints the total of each job until the queue is shut down.
//
//   jobs = shmq.Queue.create(name, 100, type="std::map<std::string, double>")
//   jobs.put({"apples": 1.5, "pears": 0.25})
#include <shmq/shmq.hpp>

#include <iostream>
#include <map>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: python_to_cpp QUEUE (run demos/python_to_cpp.py)\n";
    return 2;
  }
  auto jobs = shmq::Queue<std::map<std::string, double>>::open(argv[1]);
  try {
    for (int n = 1;; ++n) {
      double total = 0;
      for (const auto& [fruit, kilos] : jobs.get()) total += kilos;
      std::cout << "C++ worker: job " << n << " weighs " << total << " kg\n";
    }
  } catch (const shmq::ShutDown&) {
    std::cout << "C++ worker: no more jobs\n";
  }
}
