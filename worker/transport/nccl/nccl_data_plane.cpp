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

StatusOr<bool> NcclLink::PollOnceLocked(bool record_event, const char* what) {
  if (state_ == State::kAborted) return AbortedError(std::string(what) + ": " + abort_reason_);
  Handles& h = *handles_;
  auto abort_with = [&](std::string reason) -> Status {
    ncclCommAbort(h.comm);
    h.comm = nullptr;
    abort_reason_ = std::move(reason);
    state_ = State::kAborted;
    return AbortedError(std::string(what) + ": " + abort_reason_ + "; communicator aborted");
  };
  ncclResult_t state = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(h.comm, &state);
  if (r != ncclSuccess) state = r;
  if (state != ncclSuccess && state != ncclInProgress) {
    std::string detail = "NCCL error " + NcclText(state);
    const char* last = ncclGetLastError(h.comm);
    if (last != nullptr && *last != '\0') detail += ": " + std::string(last);
    return abort_with(std::move(detail));
  }
  if (state == ncclInProgress) return false;
  if (!record_event) return true;
  // The group is issued to the stream: record an event once, then watch it.
  if (!event_recorded_) {
    cudaError_t err = cudaEventRecord(h.done, h.stream);
    if (err != cudaSuccess) return abort_with("cudaEventRecord: " + CudaText(err));
    event_recorded_ = true;
  }
  cudaError_t err = cudaEventQuery(h.done);
  if (err == cudaSuccess) return true;
  if (err != cudaErrorNotReady) return abort_with("cudaEventQuery: " + CudaText(err));
  return false;
}

// Polls until the work is done. The watchdog aborts at the deadline; we see that as an
// aborted link and report it as DeadlineExceeded.
Status NcclLink::PollUntilDone(Deadline deadline, bool record_event, const char* what) {
  const auto started = Clock::now();
  for (;;) {
    bool was_aborted = false;
    StatusOr<bool> done = false;
    {
      std::lock_guard lock(comm_mutex_);
      was_aborted = state_ == State::kAborted;
      done = PollOnceLocked(record_event, what);
    }
    if (!done.ok()) {
      if (was_aborted && Clock::now() >= deadline) return DeadlineExceededError(done.status().message());
      return done.status();
    }
    if (*done) return OkStatus();
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

StatusOr<bool> NcclLink::PollReady() {
  if (state_ == State::kReady) return true;
  std::lock_guard lock(comm_mutex_);
  XCPIPE_ASSIGN_OR_RETURN(bool joined, PollOnceLocked(/*record_event=*/false, "NCCL communicator initialisation"));
  if (joined) state_ = State::kReady;
  return joined;
}

Status NcclLink::Post(int peer, std::span<const DeviceBytes> sends, std::span<const MutableDeviceBytes> receives) {
  std::lock_guard lock(comm_mutex_);
  if (state_ == State::kAborted) {
    return AbortedError("NCCL link is aborted (" + abort_reason_ + "); a new unique id is needed");
  }
  if (state_ != State::kReady) return FailedPreconditionError("NCCL link: the communicator has not joined yet");
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
    return AbortedError("NCCL exchange with rank " + std::to_string(peer) + ": " + abort_reason_);
  }
  event_recorded_ = false;
  return OkStatus();
}

StatusOr<bool> NcclLink::PollPosted() {
  std::lock_guard lock(comm_mutex_);
  return PollOnceLocked(/*record_event=*/true, "NCCL exchange");
}

Status NcclLink::Exchange(int peer, std::span<const DeviceBytes> sends, std::span<const MutableDeviceBytes> receives,
                          Deadline deadline) {
  if (state_ == State::kInitializing) XCPIPE_RETURN_IF_ERROR(WaitReady(deadline));
  Arm(deadline);
  if (Status posted = Post(peer, sends, receives); !posted.ok()) {
    Disarm();
    return posted;
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

// One link's warm-up exchange (see PollReady).
struct NcclDataPlane::Warmup {
  std::shared_ptr<DeviceBufferPool::Block> scratch;  // its first byte travels
  bool posted = false;
  bool done = false;
};

NcclDataPlane::NcclDataPlane() = default;

StatusOr<std::unique_ptr<NcclDataPlane>> NcclDataPlane::Start(NcclDataPlaneOptions options) {
  if (!options.previous && !options.next) {
    return InvalidArgumentError("an NCCL data plane needs a previous link, a next link, or both");
  }
  std::unique_ptr<NcclDataPlane> plane(new NcclDataPlane());
  plane->options_ = options;
  plane->pool_ = std::make_unique<DeviceBufferPool>(options.device, options.device_pool_max_cached_bytes);
  plane->previous_warmup_ = std::make_unique<Warmup>();
  plane->next_warmup_ = std::make_unique<Warmup>();
  if (options.previous) {
    if (options.shared_header_in == nullptr) {
      XCPIPE_ASSIGN_OR_RETURN(plane->header_in_,
                              TcpReceiverLink::Listen(options.previous->header_endpoint, options.header_link));
    }
    NcclLinkOptions link{options.previous->unique_id, 2, /*rank=*/1, options.device};
    auto started = NcclLink::Start(link);
    if (!started.ok()) return started.status().WithContext("NCCL link from the previous stage");
    plane->previous_ = std::move(started).value();
  }
  if (options.next) {
    XCPIPE_ASSIGN_OR_RETURN(plane->header_out_,
                            TcpSenderLink::Create(options.next->header_endpoint, options.header_link));
    NcclLinkOptions link{options.next->unique_id, 2, /*rank=*/0, options.device};
    auto started = NcclLink::Start(link);
    if (!started.ok()) return started.status().WithContext("NCCL link to the next stage");
    plane->next_ = std::move(started).value();
  }
  return plane;
}

StatusOr<std::unique_ptr<NcclDataPlane>> NcclDataPlane::Create(NcclDataPlaneOptions options, Deadline init_deadline) {
  XCPIPE_ASSIGN_OR_RETURN(std::unique_ptr<NcclDataPlane> plane, Start(std::move(options)));
  XCPIPE_RETURN_IF_ERROR(plane->WaitReady(init_deadline));
  return plane;
}

StatusOr<bool> NcclDataPlane::PollReady() {
  if (ready_) return true;
  if (closed_) return CancelledError("NCCL data plane is closed");
  // Advances one link: joined, then its warm-up posted, then finished. The two links are
  // separate communicators on separate streams, so neither waits for the other.
  auto advance = [this](NcclLink* link, Warmup& warmup, bool sending) -> StatusOr<bool> {
    if (link == nullptr || warmup.done) return true;
    XCPIPE_ASSIGN_OR_RETURN(bool joined, link->PollReady());
    if (!joined) return false;
    if (!warmup.posted) {
      XCPIPE_ASSIGN_OR_RETURN(warmup.scratch, pool_->Acquire(1));
      if (sending) {
        const DeviceBytes byte{warmup.scratch->data, 1};
        XCPIPE_RETURN_IF_ERROR(link->Post(/*peer=*/1, {&byte, 1}, {}));
      } else {
        const MutableDeviceBytes byte{warmup.scratch->data, 1};
        XCPIPE_RETURN_IF_ERROR(link->Post(/*peer=*/0, {}, {&byte, 1}));
      }
      warmup.posted = true;
    }
    XCPIPE_ASSIGN_OR_RETURN(bool finished, link->PollPosted());
    if (finished) {
      warmup.done = true;
      warmup.scratch.reset();
    }
    return finished;
  };
  auto previous = advance(previous_.get(), *previous_warmup_, /*sending=*/false);
  if (!previous.ok()) return previous.status().WithContext("NCCL link from the previous stage");
  auto next = advance(next_.get(), *next_warmup_, /*sending=*/true);
  if (!next.ok()) return next.status().WithContext("NCCL link to the next stage");
  if (*previous && *next) ready_ = true;
  return ready_.load();
}

Status NcclDataPlane::WaitReady(Deadline deadline) {
  const auto started = Clock::now();
  for (;;) {
    XCPIPE_ASSIGN_OR_RETURN(bool ready, PollReady());
    if (ready) return OkStatus();
    if (Clock::now() >= deadline) {
      const std::string joining = JoiningLinks();
      Abort(joining + " did not join by its deadline");
      return DeadlineExceededError("NCCL data plane: " + joining +
                                   " did not join by the deadline (the neighbour never started its communicator, "
                                   "or cannot reach this one); communicators aborted");
    }
    Pause(started);
  }
}

bool NcclDataPlane::previous_joined() const { return !previous_ || previous_warmup_->done; }
bool NcclDataPlane::next_joined() const { return !next_ || next_warmup_->done; }

std::string NcclDataPlane::JoiningLinks() const {
  std::string out;
  if (!previous_joined()) out = "the link from the previous stage";
  if (!next_joined()) out += std::string(out.empty() ? "" : " and ") + "the link to the next stage";
  return out;
}

void NcclDataPlane::Abort(const std::string& reason) {
  if (previous_) previous_->Abort(reason);
  if (next_) next_->Abort(reason);
}

NcclDataPlane::~NcclDataPlane() {
  Close();
  // A warm-up still in flight keeps a kernel waiting for the peer, and freeing its buffer
  // (cudaFree synchronises the device) would wait for it forever: abort first.
  const bool in_flight = (previous_warmup_ && previous_warmup_->posted && !previous_warmup_->done) ||
                         (next_warmup_ && next_warmup_->posted && !next_warmup_->done);
  if (in_flight) Abort("data plane destroyed while joining");
  previous_warmup_.reset();
  next_warmup_.reset();
}

std::optional<TcpEndpoint> NcclDataPlane::header_listen_endpoint() const {
  if (!previous_ || header_in() == nullptr) return std::nullopt;
  return header_in()->local_endpoint();
}

Status NcclDataPlane::Send(const StageMessage& message, Deadline deadline) {
  if (closed_) return CancelledError("NCCL data plane is closed");
  if (!next_) return FailedPreconditionError("this stage has no next stage to send to (last stage)");
  if (!ready_) return FailedPreconditionError("the NCCL data plane has not joined its neighbours yet (PollReady)");
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
    // Device tensors are read only after the compute that wrote them (its event), on this
    // link's stream: ordered by the event, with no device-wide synchronisation.
    if (message.ready_event) {
      cudaSetDevice(options_.device);
      cudaError_t err = cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>(message.ready_event.get()), 0);
      if (err != cudaSuccess) return UnavailableError("waiting for the stage's compute: " + CudaText(err));
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
  if (!ready_) return FailedPreconditionError("the NCCL data plane has not joined its neighbours yet (PollReady)");
  try {
    XCPIPE_ASSIGN_OR_RETURN(ReceivedFrame frame, header_in()->Receive(deadline, PayloadMode::kOutOfBand));
    if (options_.epoch != 0 && frame.header.epoch != options_.epoch) {
      return InvalidArgumentError("header of epoch " + std::to_string(frame.header.epoch) +
                                  " refused: this NCCL link belongs to epoch " + std::to_string(options_.epoch) +
                                  " (a previous plan's sender); no receive posted");
    }
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
    const Deadline payload_deadline = std::max(deadline, Clock::now() + options_.payload_timeout);
    XCPIPE_RETURN_IF_ERROR(previous_->Exchange(/*peer=*/0, {}, receives, payload_deadline)
                               .WithContext("receiving from the previous stage"));
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
  if (header_in_) add(header_in_->counters(), false);  // a shared listener's counters are its owner's
  s.bytes_sent += payload_sent_.load(std::memory_order_relaxed);
  s.bytes_received += payload_received_.load(std::memory_order_relaxed);
  s.messages_sent = messages_sent_.load(std::memory_order_relaxed);
  s.messages_received = messages_received_.load(std::memory_order_relaxed);
  return s;
}

Status CopyTensorsToHost(StageMessage& message, std::string_view keep_on_device) {
  for (auto& t : message.tensors) {
    if (t.location() != MemoryLocation::kCudaDevice || (!keep_on_device.empty() && t.name() == keep_on_device)) continue;
    std::vector<std::byte> host(t.byte_length());
    if (!host.empty()) {
      cudaError_t err = cudaSetDevice(t.device());
      // The link's stream has finished (Exchange waited for its event): a plain copy is ordered.
      if (err == cudaSuccess) err = cudaMemcpy(host.data(), t.bytes().data(), host.size(), cudaMemcpyDeviceToHost);
      if (err != cudaSuccess) {
        cudaGetLastError();
        return UnavailableError("copying tensor '" + t.name() + "' from device " + std::to_string(t.device()) +
                                " to the host: " + CudaText(err));
      }
    }
    XCPIPE_ASSIGN_OR_RETURN(TensorFrame copy, TensorFrame::Own(t.name(), t.dtype(), t.shape(), std::move(host)));
    t = std::move(copy);
  }
  return OkStatus();
}

}  // namespace xcpipe::transport
