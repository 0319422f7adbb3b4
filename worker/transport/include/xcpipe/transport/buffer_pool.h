// HostBufferPool: reusable, pre-touched host memory for received tensor bytes.
//
// Why: on these machines the first write to fresh memory runs at ~0.3 GB/s (page faults), 10x
// slower than the network. A receiver that allocated per message would be bound by that, so
// every receive buffer comes from this pool and goes back to it when the last TensorFrame
// using it is destroyed, still resident.
//
// Blocks are 64-byte aligned, sized up to a multiple of 64 KiB, and pre-faulted when allocated
// (MADV_HUGEPAGE is requested for blocks of 2 MiB and more; the kernel may ignore it). Acquire
// returns the smallest cached block that fits, else allocates one. A returned block is cached
// while the cache holds at most `max_cached_bytes`, else freed.
//
// Thread-safe (one mutex). Ownership: Acquire returns a shared_ptr; the block goes back to the
// pool when its last reference (including every TensorFrame sharing it) is dropped. Blocks may
// outlive the pool: then they are simply freed. Allocation failure is ResourceExhausted.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe::transport {

class HostBuffer {
 public:
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer();

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t capacity() const { return capacity_; }

 private:
  friend class HostBufferPool;
  HostBuffer(std::byte* data, size_t capacity) : data_(data), capacity_(capacity) {}
  std::byte* data_;
  size_t capacity_;
};

class HostBufferPool {
 public:
  static constexpr size_t kAlignment = 64;
  static constexpr size_t kGranularity = size_t{64} << 10;

  explicit HostBufferPool(size_t max_cached_bytes);
  ~HostBufferPool();
  HostBufferPool(const HostBufferPool&) = delete;
  HostBufferPool& operator=(const HostBufferPool&) = delete;

  // A block of at least `bytes` (bytes may be 0: a 0-capacity block that needs no memory).
  StatusOr<std::shared_ptr<HostBuffer>> Acquire(size_t bytes);

  // Allocates and pre-faults `count` blocks of `bytes` now, so the first receives are fast.
  Status Reserve(size_t bytes, size_t count);

  size_t cached_bytes() const;
  size_t cached_blocks() const;
  // Blocks allocated since the pool was made (a test and bench probe for reuse).
  size_t allocations() const;

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
};

}  // namespace xcpipe::transport
