// The smallest real use: a queue shared with a child process.
#include <shmq/shmq.hpp>

#include <cstdio>
#include <string>

int main() {
  shmq::Queue<std::string> q(2);
  shmq::Process child([](shmq::Queue<std::string> out) { out.put("hello from a child"); }, q);
  child.start();
  const std::string got = q.get();
  child.join();
  std::printf("%s\n", got.c_str());
  return got == "hello from a child" && child.exitcode() == 0 ? 0 : 1;
}
