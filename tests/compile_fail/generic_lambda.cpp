// Must not compile: a generic lambda as a Pool task.
#include <vector>

#include "shmq/pool.hpp"

int main() {
  shmq::Pool pool(1);
  int n = 0;
  for (int r : pool.imap([](auto x) { return x + 1; }, std::vector<int>{1, 2})) n += r;
  return n;
}
