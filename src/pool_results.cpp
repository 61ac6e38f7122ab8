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
  this->feed(Deadline::never());  // the workers start at once, as Python's imap does
}

IMapCore::~IMapCore() {
  if (!exhausted_) core_->feeder_done();
  for (auto& chunk : in_flight_) core_->forget(*chunk.job);
}

void IMapCore::feed(const Deadline& deadline) {
  const std::size_t at_least = 2 * core_->processes();
  while (!exhausted_ && in_flight_.size() < window_ &&
         (in_flight_.size() < at_least || in_flight_bytes_ < kBytesInFlight)) {
    if (!unsent_) {
      try {
        unsent_ = feed_();
      } catch (...) {
        feed_error_ = std::current_exception();
      }
      if (!unsent_) {
        exhausted_ = true;
        core_->feeder_done();
        return;
      }
    }
    std::vector<OutgoingTask> one;
    one.push_back(std::move(*unsent_));
    std::shared_ptr<Job> job;
    try {
      job = core_->submit(one, {}, deadline, true);
    } catch (const Error&) {
      // The pool ended or was joined: the chunks in flight come first, then this, once.
      feed_error_ = std::current_exception();
      unsent_.reset();
      exhausted_ = true;
      core_->feeder_done();
      return;
    }
    if (!job) {  // no room in the task ring by the deadline: kept for the next call
      unsent_ = std::move(one.front());
      return;
    }
    const Payload& args = one.front().message.args;
    const std::size_t bytes =
        args.where == Payload::Where::inline_bytes ? args.bytes.size() : args.memfd.size;
    in_flight_.push_back({std::move(job), one.front().items, bytes});
    in_flight_bytes_ += bytes;
    unsent_.reset();
  }
}

std::optional<std::pair<TaskResult, std::size_t>> IMapCore::next(const Deadline& deadline) {
  if (in_flight_.size() <= window_ / 2) feed(deadline);
  if (in_flight_.empty()) {
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
