// The seed's third example, line for line:
//
//   from multiprocessing import Manager, Pool
//   import os, time, random
//
//   def reader(q):
//       print "reader启动(%s)，父进程为(%s)" % (os.getpid(), os.getppid())
//       for i in range(q.qsize()):
//           print 'ge data from queue:\t%s' % q.get(True)
//
//   def writer(q):
//       print "reader启动(%s)，父进程为(%s)" % (os.getpid(), os.getppid())
//       for v in ['A', 'B', 'C']:
//           q.put(v)
//
//   if __name__ == '__main__':
//       print '(%s) start' % os.getpid()
//       q = Manager().Queue()   # a queue that pool workers can use
//       pool = Pool()           # a pool of worker processes
//       pool.apply(writer, (q,))  # blocking: writer finishes before reader starts
//       pool.apply(reader, (q,))
//       pool.close()
//       pool.join()
//       print '(%s) end' % os.getpid()
//
// The printed texts are the seed's own (its writer, too, says "reader启动"). In shmq the workers'
// parent is the pool's manager process, so the parent pid they print is the manager's.
#include <shmq/shmq.hpp>

#include <unistd.h>

#include <cstdio>
#include <string>

void reader(shmq::Queue<std::string> q) {
  std::printf("reader启动(%d)，父进程为(%d)\n", getpid(), getppid());
  for (std::size_t i = 0, n = q.qsize(); i < n; ++i) {
    std::printf("ge data from queue:\t%s\n", q.get().c_str());
  }
}

void writer(shmq::Queue<std::string> q) {
  std::printf("reader启动(%d)，父进程为(%d)\n", getpid(), getppid());
  for (const char* v : {"A", "B", "C"}) {
    q.put(v);
  }
}

int main() {
  std::printf("(%d) start\n", getpid());
  shmq::Manager manager;
  auto q = manager.Queue<std::string>();  // a queue that pool workers can use
  shmq::Pool pool;                        // a pool of worker processes
  pool.apply(writer, q);                  // blocking: writer finishes before reader starts
  pool.apply(reader, q);
  pool.close();
  pool.join();
  std::printf("(%d) end\n", getpid());
}
