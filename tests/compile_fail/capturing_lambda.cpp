// Must not compile: a capturing lambda as a Pool task.
#include "shmq/pool.hpp"

int main() {
  shmq::Pool pool(1);
  int offset = 1;
  return pool.apply([offset](int x) { return x + offset; }, 2);
}
