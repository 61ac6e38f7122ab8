// The seed's first example, line for line:
//
//   from multiprocessing import Queue
//   q = Queue(3)
//   print q.empty()      # True
//   q.put('消息1')
//   q.put('消息2')
//   print q.full()       # False
//   q.put('消息3')
//   print q.full()       # True
//   print q.qsize()      # 3
//   print q.get()        # 消息1
//   print q.qsize()      # 2
//   # 如果消息的队列已经满了，当我们再次向其中put内容的时候，会报错
//   # (put_nowait on a full queue raises queue.Full)
#include <shmq/shmq.hpp>

#include <iostream>
#include <string>

int main() {
  std::cout << std::boolalpha;
  shmq::Queue<std::string> q(3);  // at most three messages
  std::cout << q.empty() << '\n';  // true
  q.put("消息1");
  q.put("消息2");
  std::cout << q.full() << '\n';  // false
  q.put("消息3");
  std::cout << q.full() << '\n';  // true

  std::cout << q.qsize() << '\n';  // 3
  std::cout << q.get() << '\n';    // 消息1
  std::cout << q.qsize() << '\n';  // 2

  // Full again; put() would now wait for room, put_nowait() throws shmq::Full at once.
  q.put("消息4");
  try {
    q.put_nowait("消息5");
  } catch (const shmq::Full& e) {
    std::cout << "put_nowait on a full queue: " << e.what() << '\n';
  }
}
