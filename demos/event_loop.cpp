// One process serving three queues, a Connection and a timer from one epoll loop. In Python the
// nearest is multiprocessing.connection.wait over the pipe, the queues' readers and a timer:
//
//   from multiprocessing import Process, Queue, Pipe
//   from multiprocessing.connection import wait
//
//   def producer(queues, conn):
//       for i in range(30):
//           queues[i % 3].put(i)
//       for word in ['hello', 'event', 'loop']:
//           conn.send(word)
//       conn.close()
//
//   if __name__ == '__main__':
//       queues = [Queue(), Queue(), Queue()]
//       parent, child = Pipe()
//       p = Process(target=producer, args=(queues, child)); p.start(); child.close()
//       ... wait([parent, *(q._reader for q in queues)], timeout=0.05) until end of stream ...
//
// Here the queues and the connection reach epoll through one shmq::Notifier descriptor, beside a
// timerfd; the loop ends once every queue is drained, the connection has reached end of stream
// and the timer has ticked.
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <shmq/shmq.hpp>
#include <string>
#include <vector>

int main() {
  std::vector<shmq::Queue<int>> queues(3);
  auto [parent, child] = shmq::Pipe<std::string>();
  shmq::Process producer(
      [](std::vector<shmq::Queue<int>> qs, shmq::Connection<std::string> conn) {
        for (int i = 0; i < 30; ++i) qs[static_cast<std::size_t>(i % 3)].put(i);
        for (const char* word : {"hello", "event", "loop"}) conn.send(word);
        conn.close();
      },
      queues, child);
  producer.start();
  child.close();  // the parent's copy: unused here

  shmq::Notifier notifier({queues[0], queues[1], queues[2], parent});
  const int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  const itimerspec every_10ms{{0, 10'000'000}, {0, 10'000'000}};
  timerfd_settime(timer, 0, &every_10ms, nullptr);
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event in{};
  in.events = EPOLLIN;
  in.data.fd = notifier.fd();
  epoll_ctl(ep, EPOLL_CTL_ADD, notifier.fd(), &in);
  in.data.fd = timer;
  epoll_ctl(ep, EPOLL_CTL_ADD, timer, &in);

  int sums[3] = {0, 0, 0};
  int counts[3] = {0, 0, 0};
  std::vector<std::string> words;
  bool end_of_stream = false;
  std::uint64_t ticks = 0;
  while (!end_of_stream || counts[0] + counts[1] + counts[2] < 30 || ticks == 0) {
    epoll_event events[2];
    const int n = epoll_wait(ep, events, 2, -1);
    for (int e = 0; e < n; ++e) {
      if (events[e].data.fd == timer) {
        std::uint64_t expired = 0;
        if (read(timer, &expired, sizeof expired) == sizeof expired) ticks += expired;
        continue;
      }
      for (std::size_t i : notifier.ready()) {  // none ready: it re-arms the descriptor
        if (i < 3) {
          while (auto v = queues[i].try_get()) {
            sums[i] += *v;
            ++counts[i];
          }
          continue;
        }
        try {
          while (parent.poll()) words.push_back(parent.recv());
        } catch (const shmq::EOFError&) {
          end_of_stream = true;
        }
      }
    }
  }
  producer.join();
  for (int i = 0; i < 3; ++i) std::printf("queue %d: %d messages, sum %d\n", i, counts[i], sums[i]);
  std::printf("connection:");
  for (const std::string& w : words) std::printf(" %s", w.c_str());
  std::printf(", then end of stream\n");
  std::printf("timer: ticked\n");
  close(ep);
  close(timer);
  return 0;
}
