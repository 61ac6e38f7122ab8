// The seed's second example, line for line:
//
//   from multiprocessing import Process, Queue
//   import os, time, random
//
//   def write(q):
//       for value in ['A', 'B', 'C']:
//           q.put(value)
//           time.sleep(random.random())
//
//   def read(q):
//       while True:
//           if not q.empty():
//               value = q.get(True)
//               print 'get %s from queue' % value
//               time.sleep(random.random())
//           else:
//               break
//
//   if __name__ == '__main__':
//       q = Queue()
//       pw = Process(target=write, args=(q,))
//       pr = Process(target=read, args=(q,))
//       pw.start()
//       pw.join()
//       pr.start()
//       pr.join()
//       print '数据读写结束'
#include <shmq/shmq.hpp>

#include <chrono>
#include <iostream>
#include <random>
#include <string>
#include <thread>

// The seed's names, in a namespace of their own: unqualified, write and read are also POSIX's.
namespace seed {

// time.sleep(random.random()): up to a second.
void sleep_random() {
  std::random_device seed;
  std::uniform_real_distribution<double> seconds(0.0, 1.0);
  std::mt19937 random(seed());
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds(random)));
}

void write(shmq::Queue<std::string> q) {
  for (const char* value : {"A", "B", "C"}) {
    q.put(value);
    sleep_random();
  }
}

void read(shmq::Queue<std::string> q) {
  while (true) {
    if (!q.empty()) {
      const std::string value = q.get();
      std::cout << "get " << value << " from queue" << std::endl;
      sleep_random();
    } else {
      break;
    }
  }
}

}  // namespace seed

int main() {
  shmq::Queue<std::string> q;      // the parent makes the queue
  shmq::Process pw(seed::write, q);    // a writer process
  shmq::Process pr(seed::read, q);     // a reader process

  pw.start();  // start the writer
  pw.join();   // wait for it to finish

  pr.start();  // start the reader
  pr.join();   // wait for it to finish

  std::cout << "数据读写结束" << std::endl;  // reading and writing have ended
}
