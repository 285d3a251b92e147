#include "runtime/prefix_cache.h"

#include <algorithm>

namespace dsv2 {

namespace {
inline uint64_t mix(uint64_t h, uint64_t v) {
  // splitmix64 finalizer over an FNV-style combine: cheap and well spread.
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}
}  // namespace

uint64_t PrefixCache::chain(uint64_t parent, std::span<const int32_t> block_tokens) {
  uint64_t h = mix(parent, block_tokens.size());
  for (int32_t t : block_tokens) h = mix(h, uint64_t(uint32_t(t)));
  return h;
}

std::vector<int32_t> PrefixCache::match(std::span<const int32_t> tokens, int64_t max_blocks) {
  std::vector<int32_t> out;
  uint64_t h = kRootHash;
  const int64_t n = std::min<int64_t>(max_blocks, int64_t(tokens.size()) / kCacheBlockSize);
  for (int64_t b = 0; b < n; ++b) {
    auto blk = tokens.subspan(size_t(b * kCacheBlockSize), size_t(kCacheBlockSize));
    uint64_t next = chain(h, blk);
    auto it = entries_.find(next);
    if (it == entries_.end() || it->second.parent != h || !std::equal(blk.begin(), blk.end(), it->second.tokens.begin(),
                                                                      it->second.tokens.end()))
      break;
    it->second.last_use = ++clock_;
    alloc_.retain(it->second.block);
    out.push_back(it->second.block);
    h = next;
  }
  return out;
}

uint64_t PrefixCache::insert(uint64_t parent, std::span<const int32_t> block_tokens, int32_t block) {
  uint64_t h = chain(parent, block_tokens);
  auto [it, added] = entries_.try_emplace(h);
  if (added) {
    it->second = Entry{block, parent, std::vector<int32_t>(block_tokens.begin(), block_tokens.end()), ++clock_};
    alloc_.retain(block);
  } else {
    it->second.last_use = ++clock_;
  }
  return h;
}

int32_t PrefixCache::evictable() const {
  int32_t n = 0;
  for (auto& [h, e] : entries_) n += alloc_.refcount(e.block) == 1;
  return n;
}

int32_t PrefixCache::evict(int32_t n) {
  if (n <= 0) return 0;
  std::vector<std::pair<uint64_t, uint64_t>> cand;  // (last_use, hash)
  for (auto& [h, e] : entries_)
    if (alloc_.refcount(e.block) == 1) cand.push_back({e.last_use, h});
  std::sort(cand.begin(), cand.end());
  int32_t done = 0;
  for (auto& [use, h] : cand) {
    if (done == n) break;
    auto it = entries_.find(h);
    alloc_.release(it->second.block);
    entries_.erase(it);
    ++done;
  }
  return done;
}

void PrefixCache::clear() {
  for (auto& [h, e] : entries_) alloc_.release(e.block);
  entries_.clear();
}

}  // namespace dsv2
