// PrepareThread (prepare_thread.h).
#include "prepare_thread.h"

#include <exception>

namespace xcpipe::coordinator::detail {

PrepareThread::PrepareThread(const RequestPreparer* edge) : edge_(edge), thread_([this] { Loop(); }) {}

PrepareThread::~PrepareThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void PrepareThread::Post(SubmitIntake job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    todo_.push_back(std::move(job));
  }
  cv_.notify_all();
}

std::vector<SubmitIntake> PrepareThread::TakeDone() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SubmitIntake> out;
  out.swap(done_);
  return out;
}

size_t PrepareThread::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return todo_.size() + in_progress_ + done_.size();
}

void PrepareThread::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || !todo_.empty(); });
    if (stop_) return;
    SubmitIntake job = std::move(todo_.front());
    todo_.pop_front();
    ++in_progress_;
    lock.unlock();
    try {
      job.prepared = edge_->Prepare(job.prompt_json, job.images);
    } catch (const std::exception& e) {
      job.prepared = InternalError(std::string("preparing the request: ") + e.what());
    }
    job.images.clear();  // the encoded bytes are not needed any more
    job.images.shrink_to_fit();
    lock.lock();
    --in_progress_;
    done_.push_back(std::move(job));
  }
}

}  // namespace xcpipe::coordinator::detail
