// The prefix cache on its own: full blocks keyed by the hash of the whole prefix, reference counts,
// least-recently-used eviction of blocks nobody but the cache holds.
#include <numeric>

#include <gtest/gtest.h>

#include "runtime/prefix_cache.h"

namespace dsv2 {
namespace {

std::vector<int32_t> seq_tokens(int n, int32_t base) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), base);
  return t;
}

// Registers the full blocks of `tokens` held in `blocks`, as the scheduler does after a forward.
void register_all(PrefixCache& pc, const std::vector<int32_t>& tokens, const std::vector<int32_t>& blocks) {
  uint64_t h = PrefixCache::kRootHash;
  for (size_t b = 0; b < blocks.size() && (b + 1) * kCacheBlockSize <= tokens.size(); ++b)
    h = pc.insert(h, std::span<const int32_t>(tokens).subspan(b * kCacheBlockSize, kCacheBlockSize), blocks[b]);
}

TEST(PrefixCache, MatchesWholeBlocksOfTheSamePrefixOnly) {
  BlockAllocator alloc(8);
  PrefixCache pc(alloc);
  auto a = seq_tokens(200, 10);  // 3 full blocks + 8 tokens
  std::vector<int32_t> blocks = {alloc.allocate(), alloc.allocate(), alloc.allocate(), alloc.allocate()};
  register_all(pc, a, blocks);
  EXPECT_EQ(pc.size(), 3);
  EXPECT_EQ(alloc.refcount(blocks[0]), 2);  // the sequence and the cache
  EXPECT_EQ(alloc.refcount(blocks[3]), 1);  // partial block: not cached

  // Same first 130 tokens: two blocks match; each is retained for the caller.
  auto b = a;
  b[130] = 999;
  auto hit = pc.match(b, 100);
  EXPECT_EQ(hit, (std::vector<int32_t>{blocks[0], blocks[1]}));
  EXPECT_EQ(alloc.refcount(blocks[0]), 3);
  for (int32_t x : hit) alloc.release(x);
  // The cap on blocks is honoured; a different first block matches nothing; so does a block that
  // equals a cached one but follows another prefix.
  EXPECT_EQ(pc.match(a, 1).size(), 1u);
  alloc.release(blocks[0]);
  auto c = a;
  c[0] = 5;
  EXPECT_TRUE(pc.match(c, 100).empty());
  std::vector<int32_t> shifted(a.begin() + 64, a.end());
  EXPECT_TRUE(pc.match(shifted, 100).empty());
}

TEST(PrefixCache, EvictsOnlyUnusedBlocksLeastRecentlyUsedFirst) {
  BlockAllocator alloc(6);
  PrefixCache pc(alloc);
  auto a = seq_tokens(128, 0), b = seq_tokens(64, 500);
  std::vector<int32_t> ba = {alloc.allocate(), alloc.allocate()}, bb = {alloc.allocate()};
  register_all(pc, a, ba);
  register_all(pc, b, bb);
  EXPECT_EQ(pc.evictable(), 0);
  for (int32_t x : ba) alloc.release(x);  // sequence a finished: only the cache holds its blocks
  EXPECT_EQ(pc.evictable(), 2);
  EXPECT_EQ(alloc.free_count(), 3);
  // Touch a's first block so that its second block is the least recently used.
  for (int32_t x : pc.match(a, 1)) alloc.release(x);
  EXPECT_EQ(pc.evict(1), 1);
  EXPECT_EQ(alloc.free_count(), 4);
  EXPECT_EQ(pc.match(a, 2).size(), 1u);  // the first block is still there
  alloc.release(ba[0]);
  EXPECT_EQ(pc.evict(10), 1);            // b's block is still used by its sequence
  EXPECT_EQ(pc.size(), 1);
  alloc.release(bb[0]);
  pc.clear();
  EXPECT_EQ(alloc.free_count(), 6);
}

}  // namespace
}  // namespace dsv2
