// The non-template halves of AsyncResult and IMapIterator, and Pool's own members.
#include <algorithm>

#include "pool_core.hpp"
#include "shmq/pool.hpp"

namespace shmq::detail {

namespace {
// imap keeps at most this many chunks per worker in flight, and feeds no more once the chunks in
// flight hold kBytesInFlight of input (but always two per worker, whatever their size).
constexpr std::size_t kChunksInFlightPerWorker = 64;
constexpr std::size_t kBytesInFlight = std::size_t{64} << 20;
}  // namespace

const std::byte* TaskResult::data() const noexcept {
  return file.is_open() ? file.data() : reinterpret_cast<const std::byte*>(bytes.data());
}

std::size_t TaskResult::size() const noexcept {
  return file.is_open() ? file.size() : bytes.size();
}

void TaskResult::throw_failure() const {
  if (outcome == TaskOutcome::raised) throw RemoteError(type_name, what);
  throw WorkerLost("shmq::Pool: " + what);
}

PendingTasks::PendingTasks(std::shared_ptr<PoolCore> core, std::shared_ptr<Job> job)
    : core_(std::move(core)), job_(std::move(job)) {}

PendingTasks::~PendingTasks() {
  if (job_) core_->forget(*job_);
}

bool PendingTasks::wait(const Deadline& deadline) {
  core_->check_not_waiting_for_itself(*job_);
  return core_->wait([this] { return job_->complete(); }, deadline);
}

const std::vector<TaskResult>& PendingTasks::results() const {
  return job_->results;
}

IMapCore::IMapCore(std::shared_ptr<PoolCore> core, Feed feed, bool ordered)
    : core_(std::move(core)),
      feed_(std::move(feed)),
      ordered_(ordered),
      window_(kChunksInFlightPerWorker * core_->processes()) {
  core_->feeder_started();
  feeding_ = true;
  this->feed(Deadline::never());  // the workers start at once, as Python's imap does
}

IMapCore::~IMapCore() {
  finish_feeding();
  for (auto& chunk : in_flight_) core_->forget(*chunk.job);
}

void IMapCore::finish_feeding() noexcept {
  if (feeding_) core_->feeder_done();
  feeding_ = false;
}

namespace {
std::size_t argument_bytes(const OutgoingTask& task) {
  const Payload& args = task.message.args;
  return args.where == Payload::Where::inline_bytes ? args.bytes.size() : args.memfd.size;
}
}  // namespace

void IMapCore::feed(const Deadline& deadline) {
  const std::size_t at_least = 2 * core_->processes();
  const auto wants_more = [&] {
    const std::size_t chunks = in_flight_.size() + unsent_.size();
    return chunks < window_ &&
           (chunks < at_least || in_flight_bytes_ + unsent_bytes_ < kBytesInFlight);
  };
  while (!exhausted_ && wants_more()) {
    std::optional<OutgoingTask> next;
    try {
      next = feed_();
    } catch (...) {
      feed_error_ = std::current_exception();
    }
    if (!next) {
      exhausted_ = true;
      break;
    }
    unsent_bytes_ += argument_bytes(*next);
    unsent_.push_back(std::move(*next));
  }
  if (!unsent_.empty()) {
    std::vector<std::shared_ptr<Job>> jobs;
    try {
      jobs = core_->submit_each(unsent_, deadline);
    } catch (const Error&) {
      // The pool ended or was joined: the chunks in flight come first, then this, once.
      feed_error_ = std::current_exception();
      unsent_.clear();
      unsent_bytes_ = 0;
      exhausted_ = true;
    }
    // What the deadline left unqueued stays in unsent_ for the next call.
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      const std::size_t bytes = argument_bytes(unsent_[i]);
      in_flight_.push_back({std::move(jobs[i]), unsent_[i].items, bytes});
      in_flight_bytes_ += bytes;
      unsent_bytes_ -= bytes;
    }
    unsent_.erase(unsent_.begin(), unsent_.begin() + static_cast<std::ptrdiff_t>(jobs.size()));
  }
  if (exhausted_ && unsent_.empty()) finish_feeding();
}

std::optional<std::pair<TaskResult, std::size_t>> IMapCore::next(const Deadline& deadline) {
  if (in_flight_.size() <= window_ / 2) feed(deadline);
  if (in_flight_.empty()) {
    if (!unsent_.empty())
      throw TimeoutError("shmq::IMapIterator: no room for a task within the timeout");
    if (feed_error_) std::rethrow_exception(std::exchange(feed_error_, nullptr));
    return std::nullopt;
  }
  std::size_t done = 0;
  const bool arrived = core_->wait(
      [&] {
        if (ordered_) return in_flight_.front().job->complete();
        for (done = 0; done < in_flight_.size(); ++done) {
          if (in_flight_[done].job->complete()) return true;
        }
        return false;
      },
      deadline);
  if (!arrived) throw TimeoutError("shmq::IMapIterator: no result within the timeout");
  InFlight chunk = std::move(in_flight_[done]);
  in_flight_.erase(in_flight_.begin() + static_cast<std::ptrdiff_t>(done));
  in_flight_bytes_ -= chunk.bytes;
  // Refilled in bursts, once half the window has drained: one wake-up of the workers per burst,
  // not one per chunk.
  if (in_flight_.size() <= window_ / 2) feed(Deadline::now());
  return std::make_pair(std::move(chunk.job->results.front()), chunk.items);
}

}  // namespace shmq::detail

namespace shmq {

Pool::Pool(PoolOptions options) : core_(std::make_shared<detail::PoolCore>(std::move(options))) {}

Pool::~Pool() {
  core_->shut_down();
}

detail::PendingTasks Pool::submit(std::vector<detail::OutgoingTask>& tasks,
                                  detail::Deliver deliver) {
  return detail::PendingTasks(core_,
                              core_->submit(tasks, std::move(deliver), detail::Deadline::never()));
}

std::unique_ptr<detail::IMapCore> Pool::start_imap(detail::IMapCore::Feed feed, bool ordered) {
  return std::make_unique<detail::IMapCore>(core_, std::move(feed), ordered);
}

std::size_t Pool::default_chunksize(std::size_t items) const noexcept {
  // Python's choice: about four chunks per worker.
  const std::size_t per = core_->processes() * 4;
  return std::max<std::size_t>(1, (items + per - 1) / per);
}

detail::PayloadTarget Pool::payload_target() const noexcept {
  return core_->payload_target();
}

void Pool::close() {
  core_->close();
}
void Pool::join() {
  core_->join();
}
void Pool::terminate() {
  core_->terminate();
}
std::size_t Pool::processes() const noexcept {
  return core_->processes();
}

}  // namespace shmq
