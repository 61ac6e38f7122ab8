// Must not compile: a std::function as a Pool task.
#include <functional>
#include <vector>

#include "shmq/pool.hpp"

int main() {
  shmq::Pool pool(1);
  std::function<int(int)> twice = [](int x) { return 2 * x; };
  return static_cast<int>(pool.map(twice, std::vector<int>{1, 2}).size());
}
