#include "xcpipe/transport/buffer_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

namespace xcpipe::transport {
namespace {

constexpr size_t kHugePageBytes = size_t{2} << 20;

size_t RoundUp(size_t value, size_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// Fresh memory, resident: every page is written once here, not in the middle of a receive.
std::byte* AllocateTouched(size_t capacity) {
  void* p = std::aligned_alloc(HostBufferPool::kAlignment, capacity);
  if (p == nullptr) return nullptr;
  if (capacity >= kHugePageBytes) madvise(p, capacity, MADV_HUGEPAGE);  // fewer faults where THP is on
  std::memset(p, 0, capacity);
  return static_cast<std::byte*>(p);
}

}  // namespace

HostBuffer::~HostBuffer() { std::free(data_); }

struct HostBufferPool::Shared {
  explicit Shared(size_t max_cached) : max_cached_bytes(max_cached) {}
  const size_t max_cached_bytes;
  mutable std::mutex mutex;
  std::multimap<size_t, std::unique_ptr<HostBuffer>> free_blocks;  // by capacity
  size_t cached_bytes = 0;
  size_t allocations = 0;

  void Return(std::unique_ptr<HostBuffer> block) {
    std::lock_guard lock(mutex);
    if (cached_bytes + block->capacity() > max_cached_bytes) return;  // freed on scope exit
    cached_bytes += block->capacity();
    free_blocks.emplace(block->capacity(), std::move(block));
  }
};

HostBufferPool::HostBufferPool(size_t max_cached_bytes) : shared_(std::make_shared<Shared>(max_cached_bytes)) {}
HostBufferPool::~HostBufferPool() = default;

StatusOr<std::shared_ptr<HostBuffer>> HostBufferPool::Acquire(size_t bytes) {
  std::unique_ptr<HostBuffer> block;
  {
    std::lock_guard lock(shared_->mutex);
    auto it = shared_->free_blocks.lower_bound(bytes);
    if (it != shared_->free_blocks.end()) {
      block = std::move(it->second);
      shared_->cached_bytes -= block->capacity();
      shared_->free_blocks.erase(it);
    }
  }
  if (!block) {
    size_t capacity = RoundUp(std::max<size_t>(bytes, 1), kGranularity);
    std::byte* data = AllocateTouched(capacity);
    if (data == nullptr) {
      return ResourceExhaustedError("receive buffer of " + std::to_string(capacity) + " bytes could not be allocated");
    }
    block.reset(new HostBuffer(data, capacity));
    std::lock_guard lock(shared_->mutex);
    ++shared_->allocations;
  }
  // The deleter holds the pool's state weakly: a block that outlives its pool is just freed.
  std::weak_ptr<Shared> weak = shared_;
  HostBuffer* raw = block.release();
  return std::shared_ptr<HostBuffer>(raw, [weak](HostBuffer* b) {
    std::unique_ptr<HostBuffer> owned(b);
    if (auto pool = weak.lock()) pool->Return(std::move(owned));
  });
}

Status HostBufferPool::Reserve(size_t bytes, size_t count) {
  std::vector<std::shared_ptr<HostBuffer>> held;
  held.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    // Allocate fresh blocks (not reuse the ones just taken) by holding them until the end.
    auto block = Acquire(bytes);
    if (!block.ok()) return block.status();
    held.push_back(std::move(*block));
  }
  return OkStatus();  // `held` returns every block to the cache here
}

size_t HostBufferPool::cached_bytes() const {
  std::lock_guard lock(shared_->mutex);
  return shared_->cached_bytes;
}

size_t HostBufferPool::cached_blocks() const {
  std::lock_guard lock(shared_->mutex);
  return shared_->free_blocks.size();
}

size_t HostBufferPool::allocations() const {
  std::lock_guard lock(shared_->mutex);
  return shared_->allocations;
}

}  // namespace xcpipe::transport
