// The demos print what the seed tutorial's Python prints.
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#ifdef SHMQ_DEMO_DIR

namespace {

// Runs a built demo; its standard output, and whether it exited 0.
std::string run_demo(const char* name, bool& ok) {
  FILE* run = popen((std::string(SHMQ_DEMO_DIR) + "/" + name).c_str(), "r");
  REQUIRE(run != nullptr);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, run) != nullptr) text += buf;
  ok = pclose(run) == 0;
  return text;
}

}  // namespace

TEST_CASE("the queue_basics demo prints what the seed's first example prints", "[demo]") {
  bool ok = false;
  const std::string text = run_demo("queue_basics", ok);
  CHECK(ok);
  CHECK(text.rfind("true\nfalse\ntrue\n3\n消息1\n2\nput_nowait on a full queue: shmq: unnamed queue (pid ", 0) == 0);
  CHECK(text.find("is full: 3 messages (maxsize 3)") != std::string::npos);
}

TEST_CASE("the write_read demo prints what the seed's second example prints", "[demo][process]") {
  bool ok = false;
  const std::string text = run_demo("write_read", ok);
  CHECK(ok);
  CHECK(text == "get A from queue\nget B from queue\nget C from queue\n数据读写结束\n");
}

#endif

#ifdef SHMQ_DEMO_DIR
TEST_CASE("the pool_queue demo prints what the seed's third example prints", "[demo][pool]") {
  bool ok = false;
  const std::string text = run_demo("pool_queue", ok);
  CHECK(ok);
  // Pids differ from run to run; the shape does not.
  CHECK(text.find(") start\nreader启动(") != std::string::npos);
  CHECK(text.find("ge data from queue:\tA\nge data from queue:\tB\nge data from queue:\tC\n(") !=
        std::string::npos);
  CHECK(text.find(") end\n") != std::string::npos);
}
#endif

#ifdef SHMQ_DEMO_DIR
TEST_CASE("the event_loop demo serves three queues, a connection and a timer from one epoll loop",
          "[demo][notifier][pipe]") {
  bool ok = false;
  const std::string text = run_demo("event_loop", ok);
  CHECK(ok);
  CHECK(text.rfind("queue 0: 10 messages, sum 135\nqueue 1: 10 messages, sum 145\n"
                   "queue 2: 10 messages, sum 155\nconnection: hello event loop, then end of "
                   "stream\ntimer: ticked\n",
                   0) == 0);
}
#endif
