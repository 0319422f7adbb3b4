// NCCL data plane. Compiled only in CUDA builds (see worker/transport/CMakeLists.txt).
#include "xcpipe/transport/nccl_data_plane.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <new>
#include <vector>

namespace xcpipe::transport {
namespace {

// How often a waiting call polls NCCL and the CUDA event: first spin briefly (small hand-offs
// finish in microseconds), then sleep so a long transfer does not burn a core.
constexpr auto kSpinFor = std::chrono::microseconds(200);
constexpr auto kPollSleep = std::chrono::microseconds(50);
// The destructor gives an orderly ncclCommFinalize this long before it aborts instead.
constexpr auto kFinalizeTimeout = std::chrono::seconds(5);

std::string NcclText(ncclResult_t r) { return std::string(ncclGetErrorString(r)) + " (" + std::to_string(r) + ")"; }
std::string CudaText(cudaError_t e) {
  return std::string(cudaGetErrorString(e)) + " (CUDA error " + std::to_string(static_cast<int>(e)) + ")";
}

void Pause(Clock::time_point started) {
  if (Clock::now() - started < kSpinFor) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(kPollSleep);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// NcclLink
// ---------------------------------------------------------------------------------------------

struct NcclLink::Handles {
  ncclComm_t comm = nullptr;  // null once aborted or destroyed
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
};

NcclLink::NcclLink(const NcclLinkOptions& options) : options_(options), handles_(std::make_unique<Handles>()) {
  watchdog_ = std::thread([this] { WatchdogLoop(); });
}

void* NcclLink::stream() const { return handles_->stream; }

StatusOr<std::unique_ptr<NcclLink>> NcclLink::Start(const NcclLinkOptions& options) {
  if (options.nranks < 1 || options.rank < 0 || options.rank >= options.nranks) {
    return InvalidArgumentError("NCCL link: rank " + std::to_string(options.rank) + " of " +
                                std::to_string(options.nranks) + "; expected 0 <= rank < nranks");
  }
  cudaError_t err = cudaSetDevice(options.device);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return UnavailableError("NCCL link: cudaSetDevice(" + std::to_string(options.device) + "): " + CudaText(err));
  }
  std::unique_ptr<NcclLink> link;
  try {
    link.reset(new NcclLink(options));
  } catch (const std::exception& e) {
    return InternalError(std::string("NCCL link: ") + e.what());
  }
  Handles& h = *link->handles_;
  if ((err = cudaStreamCreateWithFlags(&h.stream, cudaStreamNonBlocking)) != cudaSuccess) {
    return UnavailableError("NCCL link: cudaStreamCreate: " + CudaText(err));
  }
  if ((err = cudaEventCreateWithFlags(&h.done, cudaEventDisableTiming)) != cudaSuccess) {
    return UnavailableError("NCCL link: cudaEventCreate: " + CudaText(err));
  }
  ncclUniqueId id;
  static_assert(sizeof(id) == cuda::kNcclUniqueIdBytes);
  std::memcpy(&id, options.unique_id.data(), sizeof(id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; we poll ncclCommGetAsyncError
  std::lock_guard lock(link->comm_mutex_);
  ncclResult_t r = ncclCommInitRankConfig(&h.comm, options.nranks, id, options.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    // Without a communicator handle there is nothing to abort.
    link->state_ = State::kAborted;
    link->abort_reason_ = "ncclCommInitRankConfig: " + NcclText(r);
    if (h.comm != nullptr) {
      ncclCommAbort(h.comm);
      h.comm = nullptr;
    }
    return UnavailableError("NCCL link (rank " + std::to_string(options.rank) + " on device " +
                            std::to_string(options.device) + "): ncclCommInitRankConfig: " + NcclText(r));
  }
  return link;
}

NcclLink::~NcclLink() {
  {
    std::lock_guard lock(watchdog_mutex_);
    stopping_ = true;
  }
  watchdog_cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  std::lock_guard lock(comm_mutex_);
  Handles& h = *handles_;
  if (h.comm != nullptr) {
    bool finalized = false;
    if (state_ == State::kReady) {
      ncclResult_t r = ncclCommFinalize(h.comm);
      const auto started = Clock::now();
      while (r == ncclSuccess || r == ncclInProgress) {
        ncclResult_t state = ncclSuccess;
        if (ncclCommGetAsyncError(h.comm, &state) != ncclSuccess) break;
        if (state == ncclSuccess) {
          finalized = true;
          break;
        }
        if (state != ncclInProgress || Clock::now() - started > kFinalizeTimeout) break;
        Pause(started);
      }
    }
    if (finalized) {
      ncclCommDestroy(h.comm);
    } else {
      ncclCommAbort(h.comm);
    }
    h.comm = nullptr;
  }
  if (h.done != nullptr) cudaEventDestroy(h.done);
  if (h.stream != nullptr) cudaStreamDestroy(h.stream);
}

void NcclLink::Abort(const std::string& reason) {
  std::lock_guard lock(comm_mutex_);
  if (state_ == State::kAborted) return;
  if (handles_->comm != nullptr) ncclCommAbort(handles_->comm);
  handles_->comm = nullptr;
  abort_reason_ = reason;
  state_ = State::kAborted;
}

void NcclLink::Arm(Deadline deadline) {
  {
    std::lock_guard lock(watchdog_mutex_);
    armed_ = deadline;
  }
  watchdog_cv_.notify_all();
}

void NcclLink::Disarm() {
  std::lock_guard lock(watchdog_mutex_);
  armed_.reset();
}

void NcclLink::WatchdogLoop() {
  std::unique_lock lock(watchdog_mutex_);
  while (!stopping_) {
    if (!armed_) {
      watchdog_cv_.wait(lock);
      continue;
    }
    Deadline deadline = *armed_;
    watchdog_cv_.wait_until(lock, deadline);
    if (stopping_ || !armed_ || *armed_ != deadline || Clock::now() < deadline) continue;
    armed_.reset();
    lock.unlock();
    Abort("an NCCL operation passed its deadline; the watchdog aborted the communicator");
    lock.lock();
  }
}

// Polls the communicator until enqueued work is issued (async state success), then (when
// `record_event`) records an event and polls it until the device has finished. The watchdog
// aborts at the deadline; we see that as state kAborted.
Status NcclLink::PollUntilDone(Deadline deadline, bool record_event, const char* what) {
  const auto started = Clock::now();
  bool event_recorded = false;
  for (;;) {
    {
      std::lock_guard lock(comm_mutex_);
      if (state_ == State::kAborted) {
        std::string reason = abort_reason_;
        const bool timed_out = Clock::now() >= deadline;
        if (timed_out) return DeadlineExceededError(std::string(what) + ": " + reason);
        return AbortedError(std::string(what) + ": " + reason);
      }
      Handles& h = *handles_;
      ncclResult_t state = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(h.comm, &state);
      if (r != ncclSuccess) state = r;
      if (state != ncclSuccess && state != ncclInProgress) {
        std::string detail = NcclText(state);
        const char* last = ncclGetLastError(h.comm);
        if (last != nullptr && *last != '\0') detail += ": " + std::string(last);
        ncclCommAbort(h.comm);
        h.comm = nullptr;
        abort_reason_ = detail;
        state_ = State::kAborted;
        return AbortedError(std::string(what) + ": NCCL error " + detail + "; communicator aborted");
      }
      if (state == ncclSuccess) {
        if (!record_event) return OkStatus();
        if (!event_recorded) {
          cudaError_t err = cudaEventRecord(h.done, h.stream);
          if (err != cudaSuccess) {
            ncclCommAbort(h.comm);
            h.comm = nullptr;
            abort_reason_ = "cudaEventRecord: " + CudaText(err);
            state_ = State::kAborted;
            return AbortedError(std::string(what) + ": " + abort_reason_);
          }
          event_recorded = true;
        }
        cudaError_t err = cudaEventQuery(h.done);
        if (err == cudaSuccess) return OkStatus();
        if (err != cudaErrorNotReady) {
          ncclCommAbort(h.comm);
          h.comm = nullptr;
          abort_reason_ = "cudaEventQuery: " + CudaText(err);
          state_ = State::kAborted;
          return AbortedError(std::string(what) + ": " + abort_reason_);
        }
      }
    }
    Pause(started);
  }
}

Status NcclLink::WaitReady(Deadline deadline) {
  if (state_ == State::kReady) return OkStatus();
  Arm(deadline);
  Status s = PollUntilDone(deadline, /*record_event=*/false, "NCCL communicator initialisation");
  Disarm();
  if (s.ok()) state_ = State::kReady;
  return s;
}

Status NcclLink::Exchange(int peer, std::span<const DeviceBytes> sends, std::span<const MutableDeviceBytes> receives,
                          Deadline deadline) {
  if (state_ == State::kInitializing) XCPIPE_RETURN_IF_ERROR(WaitReady(deadline));
  if (state_ != State::kReady) {
    std::lock_guard lock(comm_mutex_);
    return AbortedError("NCCL link is aborted (" + abort_reason_ + "); a new unique id is needed");
  }
  Arm(deadline);
  {
    std::lock_guard lock(comm_mutex_);
    if (state_ == State::kAborted) {
      Disarm();
      return AbortedError("NCCL link is aborted (" + abort_reason_ + ")");
    }
    Handles& h = *handles_;
    cudaSetDevice(options_.device);
    ncclResult_t r = ncclGroupStart();
    for (const auto& s : sends) {
      if (r != ncclSuccess) break;
      r = ncclSend(s.data, s.bytes, ncclUint8, peer, h.comm, h.stream);
    }
    for (const auto& d : receives) {
      if (r != ncclSuccess) break;
      r = ncclRecv(d.data, d.bytes, ncclUint8, peer, h.comm, h.stream);
    }
    // ncclGroupEnd must close the group even after a failed call.
    ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
    if (r != ncclSuccess && r != ncclInProgress) {
      ncclCommAbort(h.comm);
      h.comm = nullptr;
      abort_reason_ = "posting send/recv: " + NcclText(r);
      state_ = State::kAborted;
      Disarm();
      return AbortedError("NCCL exchange with rank " + std::to_string(peer) + ": " + abort_reason_);
    }
  }
  Status s = PollUntilDone(deadline, /*record_event=*/true, "NCCL exchange");
  Disarm();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Device buffers
// ---------------------------------------------------------------------------------------------

// Reused device memory for received tensors (cudaMalloc is slow and synchronising). Same
// policy as HostBufferPool: best fit from the cache, else allocate; returned blocks are cached
// up to a bound. Thread-safe.
class DeviceBufferPool {
 public:
  struct Block {
    void* data = nullptr;
    size_t capacity = 0;
    int device = 0;
  };

  DeviceBufferPool(int device, size_t max_cached_bytes) : shared_(std::make_shared<Shared>(device, max_cached_bytes)) {}

  StatusOr<std::shared_ptr<Block>> Acquire(size_t bytes) {
    Block block;
    {
      std::lock_guard lock(shared_->mutex);
      auto it = shared_->free_blocks.lower_bound(bytes);
      if (it != shared_->free_blocks.end()) {
        block = it->second;
        shared_->cached -= block.capacity;
        shared_->free_blocks.erase(it);
      }
    }
    if (block.data == nullptr) {
      block.device = shared_->device;
      block.capacity = std::max<size_t>((bytes + (size_t{1} << 20) - 1) >> 20 << 20, size_t{1} << 20);
      cudaSetDevice(block.device);
      cudaError_t err = cudaMalloc(&block.data, block.capacity);
      if (err != cudaSuccess) {
        cudaGetLastError();
        return ResourceExhaustedError("device receive buffer of " + std::to_string(block.capacity) +
                                      " bytes: cudaMalloc: " + CudaText(err));
      }
    }
    std::weak_ptr<Shared> weak = shared_;
    return std::shared_ptr<Block>(new Block(block), [weak](Block* b) {
      std::unique_ptr<Block> owned(b);
      if (auto pool = weak.lock()) {
        std::lock_guard lock(pool->mutex);
        if (pool->cached + b->capacity <= pool->max_cached) {
          pool->cached += b->capacity;
          pool->free_blocks.emplace(b->capacity, *b);
          return;
        }
      }
      cudaSetDevice(b->device);
      cudaFree(b->data);
    });
  }

 private:
  struct Shared {
    Shared(int d, size_t max) : device(d), max_cached(max) {}
    ~Shared() {
      cudaSetDevice(device);
      for (auto& [capacity, block] : free_blocks) cudaFree(block.data);
    }
    const int device;
    const size_t max_cached;
    std::mutex mutex;
    std::multimap<size_t, Block> free_blocks;
    size_t cached = 0;
  };
  std::shared_ptr<Shared> shared_;
};

// ---------------------------------------------------------------------------------------------
// NcclDataPlane
// ---------------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<NcclDataPlane>> NcclDataPlane::Create(NcclDataPlaneOptions options, Deadline init_deadline) {
  if (!options.previous && !options.next) {
    return InvalidArgumentError("an NCCL data plane needs a previous link, a next link, or both");
  }
  std::unique_ptr<NcclDataPlane> plane(new NcclDataPlane());
  plane->options_ = options;
  plane->pool_ = std::make_unique<DeviceBufferPool>(options.device, options.device_pool_max_cached_bytes);
  if (options.previous) {
    XCPIPE_ASSIGN_OR_RETURN(plane->header_in_,
                            TcpReceiverLink::Listen(options.previous->header_endpoint, options.header_link));
    NcclLinkOptions link{options.previous->unique_id, 2, /*rank=*/1, options.device};
    XCPIPE_ASSIGN_OR_RETURN(plane->previous_, NcclLink::Start(link));
  }
  if (options.next) {
    XCPIPE_ASSIGN_OR_RETURN(plane->header_out_,
                            TcpSenderLink::Create(options.next->header_endpoint, options.header_link));
    NcclLinkOptions link{options.next->unique_id, 2, /*rank=*/0, options.device};
    XCPIPE_ASSIGN_OR_RETURN(plane->next_, NcclLink::Start(link));
  }
  // Both communicators initialise concurrently; waiting on one then the other cannot deadlock
  // a chain because neither blocks the other's progress.
  if (plane->previous_) {
    XCPIPE_RETURN_IF_ERROR(plane->previous_->WaitReady(init_deadline).WithContext("NCCL link from the previous stage"));
  }
  if (plane->next_) {
    XCPIPE_RETURN_IF_ERROR(plane->next_->WaitReady(init_deadline).WithContext("NCCL link to the next stage"));
  }
  return plane;
}

NcclDataPlane::~NcclDataPlane() { Close(); }

std::optional<TcpEndpoint> NcclDataPlane::header_listen_endpoint() const {
  if (!header_in_) return std::nullopt;
  return header_in_->local_endpoint();
}

Status NcclDataPlane::Send(const StageMessage& message, Deadline deadline) {
  if (closed_) return CancelledError("NCCL data plane is closed");
  if (!next_) return FailedPreconditionError("this stage has no next stage to send to (last stage)");
  try {
    // Host tensors go through one device staging block; device tensors are sent in place.
    size_t staging = 0;
    for (const auto& t : message.tensors) {
      if (t.location() == MemoryLocation::kHost)
        staging += (t.byte_length() + 255) / 256 * 256;
      else if (t.device() != options_.device) {
        return InvalidArgumentError("tensor '" + t.name() + "' is on device " + std::to_string(t.device()) +
                                    "; this data plane drives device " + std::to_string(options_.device));
      }
    }
    std::shared_ptr<DeviceBufferPool::Block> block;
    if (staging > 0) {
      XCPIPE_ASSIGN_OR_RETURN(block, pool_->Acquire(staging));
    }
    std::vector<DeviceBytes> sends;
    size_t offset = 0;
    auto* stream = static_cast<cudaStream_t>(next_->stream());
    for (const auto& t : message.tensors) {
      if (t.byte_length() == 0) continue;
      if (t.location() == MemoryLocation::kHost) {
        auto* dst = static_cast<std::byte*>(block->data) + offset;
        cudaSetDevice(options_.device);
        cudaError_t err = cudaMemcpyAsync(dst, t.bytes().data(), t.byte_length(), cudaMemcpyHostToDevice, stream);
        if (err != cudaSuccess) return UnavailableError("staging tensor '" + t.name() + "': " + CudaText(err));
        sends.push_back({dst, t.byte_length()});
        offset += (t.byte_length() + 255) / 256 * 256;
      } else {
        sends.push_back({t.bytes().data(), t.byte_length()});
      }
    }
    // The header first, so the receiver knows what to post; then the bytes.
    XCPIPE_RETURN_IF_ERROR(header_out_->Send(message, deadline, PayloadMode::kOutOfBand));
    XCPIPE_RETURN_IF_ERROR(next_->Exchange(/*peer=*/1, sends, {}, deadline).WithContext("sending to the next stage"));
    payload_sent_.fetch_add(message.payload_bytes(), std::memory_order_relaxed);
    messages_sent_.fetch_add(1, std::memory_order_relaxed);
    return OkStatus();
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("NCCL send: out of memory");
  } catch (const std::exception& e) {
    return InternalError(std::string("NCCL send: ") + e.what());
  }
}

StatusOr<StageMessage> NcclDataPlane::Receive(Deadline deadline) {
  if (closed_) return CancelledError("NCCL data plane is closed");
  if (!previous_) return FailedPreconditionError("this stage has no previous stage to receive from (first stage)");
  try {
    XCPIPE_ASSIGN_OR_RETURN(ReceivedFrame frame, header_in_->Receive(deadline, PayloadMode::kOutOfBand));
    const auto& descriptors = frame.header.tensors;
    size_t capacity = 0;
    std::vector<size_t> offsets;
    for (const auto& d : descriptors) {
      offsets.push_back(capacity);
      capacity += (d.byte_length + 255) / 256 * 256;
    }
    std::shared_ptr<DeviceBufferPool::Block> block;
    std::vector<MutableDeviceBytes> receives;
    if (capacity > 0) {
      XCPIPE_ASSIGN_OR_RETURN(block, pool_->Acquire(capacity));
      for (size_t i = 0; i < descriptors.size(); ++i) {
        if (descriptors[i].byte_length == 0) continue;
        receives.push_back({static_cast<std::byte*>(block->data) + offsets[i], descriptors[i].byte_length});
      }
    }
    XCPIPE_RETURN_IF_ERROR(
        previous_->Exchange(/*peer=*/0, {}, receives, deadline).WithContext("receiving from the previous stage"));
    StageMessage& m = frame.message;
    m.tensors.clear();
    for (size_t i = 0; i < descriptors.size(); ++i) {
      const auto& d = descriptors[i];
      StatusOr<TensorFrame> t = block ? TensorFrame::Share(d.name, d.dtype, d.shape,
                                                           {static_cast<const std::byte*>(block->data) + offsets[i],
                                                            static_cast<size_t>(d.byte_length)},
                                                           block, MemoryLocation::kCudaDevice, options_.device)
                                      : TensorFrame::Own(d.name, d.dtype, d.shape, {});
      if (!t.ok()) return t.status();
      m.tensors.push_back(std::move(*t));
    }
    payload_received_.fetch_add(frame.header.payload_bytes, std::memory_order_relaxed);
    messages_received_.fetch_add(1, std::memory_order_relaxed);
    return std::move(m);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("NCCL receive: out of memory");
  } catch (const std::exception& e) {
    return InternalError(std::string("NCCL receive: ") + e.what());
  }
}

void NcclDataPlane::Close() {
  if (closed_.exchange(true)) return;
  if (header_in_) header_in_->Close();
  if (header_out_) header_out_->Close();
  // Operations in flight end at their deadline (the watchdog); new ones are refused above.
}

DataPlaneStats NcclDataPlane::stats() const {
  DataPlaneStats s;
  auto add = [&s](const LinkCounters& c, bool sending) {
    (sending ? s.bytes_sent : s.bytes_received) += c.bytes.load(std::memory_order_relaxed);
    s.messages_refused += c.refused.load(std::memory_order_relaxed);
    s.connections_opened += c.opened.load(std::memory_order_relaxed);
    s.connections_dropped += c.dropped.load(std::memory_order_relaxed);
  };
  if (header_out_) add(header_out_->counters(), true);
  if (header_in_) add(header_in_->counters(), false);
  s.bytes_sent += payload_sent_.load(std::memory_order_relaxed);
  s.bytes_received += payload_received_.load(std::memory_order_relaxed);
  s.messages_sent = messages_sent_.load(std::memory_order_relaxed);
  s.messages_received = messages_received_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace xcpipe::transport
