// Must not compile: a member function pointer as a Pool task.
#include <string>

#include "shmq/pool.hpp"

int main() {
  shmq::Pool pool(1);
  return static_cast<int>(pool.apply(&std::string::size, std::string("abc")));
}
