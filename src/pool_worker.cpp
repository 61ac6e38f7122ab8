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

// Where a task's result is encoded: inline bytes when they fit the result ring, else the memfd the
// caller lent with the task if it is large enough, else a new memfd.
class WorkerSink final : public ResultSink {
 public:
  WorkerSink(const TaskMessage& task, std::size_t inline_limit, WorkerMappings& mappings)
      : task_(task), inline_limit_(inline_limit), mappings_(mappings) {}

  // The result message; `file` gets the new memfd to send, if the result is in one.
  ResultMessage finish(PayloadFile& file) {
    ResultMessage message;
    message.id = task_.id;
    if (lent_ != nullptr) {
      message.result.where = Payload::Where::lent;
      message.result.memfd.size = lent_->size();
    } else if (file_.is_open()) {
      message.result.where = Payload::Where::out_of_band;
      message.result.memfd.size = file_.size();
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
    const MemfdRef& loan = task_.loan;
    if (loan.is_set() && loan.size >= size) {
      try {
        lent_ = &mappings_.get(loan.holder, loan.fd, loan.name, size);
        return lent_->data();
      } catch (const DecodeError&) {  // the caller let it go: a memfd of its own instead
      }
    }
    file_ = PayloadFile::create("shmq.pool.result." + std::to_string(task_.id), size, what());
    file_.populate(size);
    return file_.data();
  }
  std::string what() const { return "the result of task " + std::to_string(task_.id); }

  const TaskMessage& task_;
  std::size_t inline_limit_;
  WorkerMappings& mappings_;
  std::string bytes_;
  PayloadFile* lent_ = nullptr;  // in mappings_
  PayloadFile file_;
};

class Worker {
 public:
  Worker(PoolShared& shared, std::size_t index)
      : shared_(shared),
        slot_(shared.slots[index]),
        inline_limit_(PoolShared::inline_limit(shared.results)),
        mappings_(shared.options.payload_cache_bytes) {}

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
      // The caller keeps a memfd it was sent, and may lend it back: its mapping here stays.
      if (file.is_open() && result.outcome == TaskOutcome::returned) {
        mappings_.keep(std::move(file));
      }
      mappings_.trim();
      slot_.task.store(0);
    }
    return kExitRetired;
  }

 private:
  ResultMessage run(const TaskMessage& task, PayloadFile& file) {
    try {
      const std::byte* args = reinterpret_cast<const std::byte*>(task.args.bytes.data());
      std::size_t args_size = task.args.bytes.size();
      if (task.args.where != Payload::Where::inline_bytes) {
        const MemfdRef& ref = task.args.memfd;
        args = mappings_.get(ref.holder, ref.fd, ref.name, ref.size).data();
        args_size = ref.size;
      }
      Reader in(args, args_size);
      WorkerSink sink(task, inline_limit_, mappings_);
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
  WorkerMappings mappings_;
};

}  // namespace

int run_worker(PoolShared& shared, std::size_t index, std::size_t number) {
  set_process_identity("ForkPoolWorker-" + std::to_string(number),
                       ProcessInfo{shared.owner_name, shared.owner_pid, 0});
  return Worker(shared, index).run();
}

}  // namespace shmq::detail
