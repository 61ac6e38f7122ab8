// A pool worker: takes a task, runs it, posts its outcome; again until the task queue is shut down
// or maxtasksperchild is reached.
#include <unistd.h>

#include <cstdio>

#include "pool_shared.hpp"
#include "shmq/detail/demangle.hpp"
#include "shmq/process.hpp"

namespace shmq::detail {

std::pair<std::string, std::string> describe_current_exception() {
  std::string type = current_exception_type_name();
  try {
    throw;
  } catch (const std::exception& e) {
    return {std::move(type), e.what()};
  } catch (...) {
    return {std::move(type), {}};
  }
}

namespace {

// Where a task's result is encoded: inline bytes when they fit the result ring, else a memfd.
class WorkerSink final : public ResultSink {
 public:
  WorkerSink(std::uint64_t task, std::size_t inline_limit)
      : task_(task), inline_limit_(inline_limit) {}

  // The result message, its memfd (if any) sealed for sending.
  ResultMessage finish(PayloadFile& file) {
    ResultMessage message;
    message.id = task_;
    if (file_.is_open()) {
      file_.seal(what());
      message.result.where = Payload::Where::out_of_band;
      message.result.size = file_.size();
      file = std::move(file_);
    } else {
      message.result.bytes = std::move(bytes_);
    }
    return message;
  }

 private:
  std::byte* reserve(std::size_t size) override {
    if (size <= inline_limit_) {
      bytes_.resize(size);
      return reinterpret_cast<std::byte*>(bytes_.data());
    }
    file_ = PayloadFile::create("shmq.pool.result." + std::to_string(task_), size, what());
    return file_.data();
  }
  std::string what() const { return "the result of task " + std::to_string(task_); }

  std::uint64_t task_;
  std::size_t inline_limit_;
  std::string bytes_;
  PayloadFile file_;
};

class Worker {
 public:
  Worker(PoolShared& shared, std::size_t index)
      : shared_(shared),
        slot_(shared.slots[index]),
        inline_limit_(PoolShared::inline_limit(shared.results)) {}

  int run() {
    if (shared_.options.initializer) {
      try {
        shared_.options.initializer();
      } catch (...) {
        const auto [type, what] = describe_current_exception();
        std::fprintf(stderr, "shmq::Pool worker (pid %d): initializer raised %s: %s\n", getpid(),
                     type.c_str(), what.c_str());
        return 1;
      }
    }
    const std::size_t most = shared_.options.maxtasksperchild;
    for (std::size_t done = 0; most == 0 || done < most; ++done) {
      TaskMessage task;
      try {
        task = shared_.tasks.get_with([&](const std::byte* data, std::size_t size) {
          TaskMessage t = decode_exactly<TaskMessage>(data, size);
          slot_.task.store(t.id);  // before the get commits: see pool_shared.hpp
          return t;
        });
      } catch (const ShutDown&) {
        return kExitShutDown;
      } catch (const DecodeError&) {
        continue;  // not a task this pool sent; get_with dropped it
      }
      PayloadFile file;
      ResultMessage result = run(task, file);
      // What the task printed goes out before its result: a caller that prints after get() (or
      // submits a task whose worker prints) must not see its own lines come first.
      std::fflush(nullptr);
      post(result, file);
      slot_.task.store(0);
    }
    return kExitRetired;
  }

 private:
  ResultMessage run(const TaskMessage& task, PayloadFile& file) {
    try {
      PayloadFile args_file;
      const std::byte* args = reinterpret_cast<const std::byte*>(task.args.bytes.data());
      std::size_t args_size = task.args.bytes.size();
      if (task.args.where == Payload::Where::out_of_band) {
        args_file = PayloadFile::open(task.args.holder, task.args.fd,
                                      arguments_file_name(task.args.holder, task.args.serial),
                                      task.args.size);
        args = args_file.data();
        args_size = args_file.size();
      }
      Reader in(args, args_size);
      WorkerSink sink(task.id, inline_limit_);
      from_address<Runner>(task.runner)(task.function, in, sink);
      return sink.finish(file);
    } catch (...) {
      file = PayloadFile();
      ResultMessage failed;
      failed.id = task.id;
      failed.outcome = TaskOutcome::raised;
      std::tie(failed.type_name, failed.what) = describe_current_exception();
      return failed;
    }
  }

  // The memfd goes first, so the caller finds it waiting when the message arrives.
  void post(ResultMessage& result, const PayloadFile& file) {
    try {
      if (file.is_open()) shared_.channel.send(result.id, file);
    } catch (const Error& e) {
      result.outcome = TaskOutcome::raised;
      result.result = Payload{};
      result.type_name = "shmq::Error";
      result.what = e.what();
    }
    // An exception's what() of any length: cut to fit the ring, which a result always does.
    const std::size_t most = inline_limit_ / 2;
    if (result.type_name.size() > most) result.type_name.resize(most);
    if (result.what.size() > most) result.what.resize(most);
    shared_.results.put(result);
  }

  PoolShared& shared_;
  WorkerSlot& slot_;
  const std::size_t inline_limit_;
};

}  // namespace

int run_worker(PoolShared& shared, std::size_t index, std::size_t number) {
  set_process_identity("ForkPoolWorker-" + std::to_string(number),
                       ProcessInfo{shared.owner_name, shared.owner_pid, 0});
  return Worker(shared, index).run();
}

}  // namespace shmq::detail
