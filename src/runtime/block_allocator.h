#pragma once
// Blocks of the paged latent cache. A block holds `block_size` (64) consecutive token positions of
// one sequence for every layer. Blocks are reference-counted so that sequences sharing a prompt
// prefix can share its blocks (prefix caching); a block returns to the free list at count zero.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv2 {

constexpr int64_t kCacheBlockSize = 64;

class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t n_blocks = 0);
  void reset(int32_t n_blocks);
  int32_t total() const { return int32_t(refs_.size()); }
  int32_t free_count() const { return int32_t(free_.size()); }
  int32_t used_count() const { return total() - free_count(); }
  // -1 when none is free.
  int32_t allocate();
  void retain(int32_t block);
  void release(int32_t block);
  int32_t refcount(int32_t block) const { return refs_[size_t(block)]; }

 private:
  std::vector<int32_t> refs_;
  std::vector<int32_t> free_;
};

// One sequence's view of the cache: its block table and how many positions are filled.
struct SequenceCache {
  std::vector<int32_t> blocks;
  int64_t length = 0;
  int64_t capacity() const { return int64_t(blocks.size()) * kCacheBlockSize; }
};

// Grows `seq` so that it can hold `new_length` positions; false (and nothing taken) if the
// allocator has too few free blocks.
bool reserve(BlockAllocator& alloc, SequenceCache& seq, int64_t new_length);
// Returns all of the sequence's blocks and empties it.
void release_all(BlockAllocator& alloc, SequenceCache& seq);

}  // namespace dsv2
