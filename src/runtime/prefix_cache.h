#pragma once
// Prefix caching over the paged latent cache: a full block (64 positions) whose contents were
// computed for a token prefix is registered under a hash of that whole prefix (the hash of the
// parent block's prefix combined with the block's own tokens). A later sequence whose prompt
// starts with the same tokens takes those blocks instead of recomputing them.
//
// The cache holds one reference on every registered block, so a block outlives the sequence that
// filled it; blocks only the cache still holds are "evictable" and are given back, least recently
// used first, when the allocator runs out. Only the engine thread uses it (no locking).
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "runtime/block_allocator.h"

namespace dsv2 {

class PrefixCache {
 public:
  explicit PrefixCache(BlockAllocator& alloc) : alloc_(alloc) {}

  // Hash of the prefix that ends with `block_tokens`, given the hash of the prefix before it
  // (kRootHash for the first block).
  static constexpr uint64_t kRootHash = 0x9e3779b97f4a7c15ull;
  static uint64_t chain(uint64_t parent, std::span<const int32_t> block_tokens);

  // Longest run of cached full blocks at the start of `tokens`, at most `max_blocks`. Each returned
  // block is retained once for the caller (release it like any other block).
  std::vector<int32_t> match(std::span<const int32_t> tokens, int64_t max_blocks);

  // Registers block `block` as holding `block_tokens` after the prefix hashed `parent`; returns the
  // prefix hash. If that prefix is already cached under another block, nothing changes.
  uint64_t insert(uint64_t parent, std::span<const int32_t> block_tokens, int32_t block);

  // Gives back up to `n` evictable blocks (least recently used first); returns how many.
  int32_t evict(int32_t n);
  int32_t evictable() const;         // registered blocks nobody but the cache holds
  int32_t size() const { return int32_t(entries_.size()); }
  void clear();                      // drops every entry (blocks still used by sequences stay theirs)

 private:
  struct Entry {
    int32_t block;
    uint64_t parent;
    std::vector<int32_t> tokens;  // checked on lookup, so a hash collision is never a false hit
    uint64_t last_use;
  };
  BlockAllocator& alloc_;
  std::unordered_map<uint64_t, Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace dsv2
