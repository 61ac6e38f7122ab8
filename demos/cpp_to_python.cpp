// A C++ producer whose records a Python program reads (demos/cpp_to_python.py): it creates a
// named Queue of tuples, says "ready" on stdout, puts the records, and shuts the queue down.
// Python finds the type in the queue's own record: no type description is needed there.
#include <shmq/shmq.hpp>

#include <cstdint>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: cpp_to_python QUEUE (run demos/cpp_to_python.py)\n";
    return 2;
  }
  using Reading = std::tuple<std::int64_t, std::string, std::vector<double>>;
  auto readings = shmq::Queue<Reading>::create(argv[1], shmq::QueueOptions{.maxsize = 16});
  std::cout << "ready" << std::endl;
  readings.put({1, "thermometer", {20.5, 21.0}});
  readings.put({2, "barometer", {1013.25}});
  readings.put({3, "anemometer", {}});
  readings.shutdown();  // Python's get drains, then raises shmq.ShutDown
}
