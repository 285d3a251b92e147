#include "runtime/block_allocator.h"

#include "common/error.h"

namespace dsv2 {

BlockAllocator::BlockAllocator(int32_t n_blocks) { reset(n_blocks); }

void BlockAllocator::reset(int32_t n_blocks) {
  refs_.assign(size_t(n_blocks), 0);
  free_.clear();
  for (int32_t i = n_blocks - 1; i >= 0; --i) free_.push_back(i);  // hand out low ids first
}

int32_t BlockAllocator::allocate() {
  if (free_.empty()) return -1;
  int32_t b = free_.back();
  free_.pop_back();
  refs_[size_t(b)] = 1;
  return b;
}

void BlockAllocator::retain(int32_t block) {
  DSV2_CHECK(block >= 0 && block < total() && refs_[size_t(block)] > 0, "block {}", block);
  ++refs_[size_t(block)];
}

void BlockAllocator::release(int32_t block) {
  DSV2_CHECK(block >= 0 && block < total() && refs_[size_t(block)] > 0, "block {}", block);
  if (--refs_[size_t(block)] == 0) free_.push_back(block);
}

bool reserve(BlockAllocator& alloc, SequenceCache& seq, int64_t new_length) {
  int64_t need = (new_length + kCacheBlockSize - 1) / kCacheBlockSize - int64_t(seq.blocks.size());
  if (need <= 0) return true;
  if (need > alloc.free_count()) return false;
  for (int64_t i = 0; i < need; ++i) seq.blocks.push_back(alloc.allocate());
  return true;
}

void release_all(BlockAllocator& alloc, SequenceCache& seq) {
  for (int32_t b : seq.blocks) alloc.release(b);
  seq.blocks.clear();
  seq.length = 0;
}

}  // namespace dsv2
