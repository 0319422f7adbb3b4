#include "encode_thread.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>

namespace xcpipe::worker {

EncodeThread::EncodeThread(int nice) {
  thread_ = std::thread([this, nice] { Loop(nice); });
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return started_; });
}

EncodeThread::~EncodeThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EncodeThread::Loop(int nice) {
  // setpriority with a thread id sets that thread's nice value only (Linux keeps one per thread).
  const auto tid = static_cast<id_t>(gettid());
  Status st;
  if (nice != 0) {
    errno = 0;
    const int was = getpriority(PRIO_PROCESS, tid);
    if (setpriority(PRIO_PROCESS, tid, std::max(was, nice)) != 0) {
      st = PermissionDeniedError("setpriority(" + std::to_string(nice) +
                                 ") of the encode thread: " + std::strerror(errno));
    }
  }
  errno = 0;
  const int now = getpriority(PRIO_PROCESS, tid);
  {
    std::lock_guard<std::mutex> lock(mu_);
    nice_ = now;
    nice_status_ = st;
    started_ = true;
  }
  cv_.notify_all();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || work_ != nullptr; });
    if (work_ == nullptr) return;  // stopping, nothing in progress
    const std::function<void()>* work = work_;
    lock.unlock();
    (*work)();
    lock.lock();
    work_ = nullptr;
    cv_.notify_all();
  }
}

void EncodeThread::Run(const std::function<void()>& work, const std::function<void()>& while_waiting,
                       std::chrono::milliseconds period) {
  std::exception_ptr failed;
  const std::function<void()> guarded = [&] {
    try {
      work();
    } catch (...) {
      failed = std::current_exception();
    }
  };
  std::unique_lock<std::mutex> lock(mu_);
  work_ = &guarded;
  cv_.notify_all();
  while (!cv_.wait_for(lock, period, [this] { return work_ == nullptr; })) {
    lock.unlock();
    if (while_waiting) while_waiting();
    lock.lock();
  }
  lock.unlock();
  if (failed) std::rethrow_exception(failed);
}

int EncodeThread::nice() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nice_;
}

Status EncodeThread::nice_status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nice_status_;
}

}  // namespace xcpipe::worker
