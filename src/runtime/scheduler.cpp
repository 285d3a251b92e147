#include "runtime/scheduler.h"

#include <algorithm>

#include "common/error.h"
#include "common/log.h"

namespace dsv2 {

Scheduler::Scheduler(BlockAllocator& alloc, SchedulerOptions opts) : alloc_(alloc), o_(opts), prefix_(alloc) {
  DSV2_CHECK(o_.max_running > 0 && o_.max_batch_tokens > 0);
}

Scheduler::~Scheduler() {
  for (Sequence* s : running_) release_all(alloc_, s->cache);
  prefix_.clear();
}

void Scheduler::add(Sequence* s) { waiting_.push_back(s); }

bool Scheduler::grow(Sequence& s, int64_t length) {
  if (reserve(alloc_, s.cache, length)) return true;
  int64_t need = (length + kCacheBlockSize - 1) / kCacheBlockSize - int64_t(s.cache.blocks.size());
  prefix_.evict(int32_t(need - alloc_.free_count()));
  return reserve(alloc_, s.cache, length);
}

void Scheduler::preempt(Sequence* s) {
  auto it = std::find(running_.begin(), running_.end(), s);
  DSV2_CHECK(it != running_.end());
  running_.erase(it);
  release_all(alloc_, s->cache);
  s->registered = 0;
  ++s->preemptions;
  ++counters_.preemptions;
  waiting_.push_front(s);
  log::debug("scheduler", "preempted sequence {} ({} tokens) to free cache blocks", s->id, s->tokens.size());
}

bool Scheduler::admit(Sequence* s) {
  DSV2_CHECK(s->cache.blocks.empty() && s->cache.length == 0);
  // Full blocks only, and never the last known token: its logits must be computed.
  std::vector<int32_t> hit;
  if (o_.prefix_caching) hit = prefix_.match(s->tokens, (int64_t(s->tokens.size()) - 1) / kCacheBlockSize);
  s->cache.blocks = hit;
  s->cache.length = int64_t(hit.size()) * kCacheBlockSize;
  s->registered = int64_t(hit.size());
  if (!grow(*s, int64_t(s->tokens.size()))) {
    release_all(alloc_, s->cache);
    s->registered = 0;
    return false;
  }
  if (!s->admitted_once) {
    s->admitted_once = true;
    s->cached_tokens = s->cache.length;
    counters_.prompt_tokens += s->prompt_len;
    counters_.prefix_hit_tokens += s->cache.length;
  }
  return true;
}

std::vector<ScheduledChunk> Scheduler::schedule() {
  std::vector<ScheduledChunk> out;
  int64_t budget = o_.max_batch_tokens;
  // Decodes first: every running sequence whose known tokens are all computed but the last.
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence* s = running_[i];
    const int64_t n = int64_t(s->tokens.size()) - s->cache.length;
    if (n != 1) continue;
    bool preempted_self = false;
    while (!grow(*s, s->cache.length + 1)) {
      Sequence* victim = running_.back();
      preempt(victim);
      if (victim == s) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) break;  // s was the last running sequence: nothing after it is left
    out.push_back({s, s->cache.length, 1, true});
    --budget;
  }
  // Prefill chunks of running sequences (their blocks were reserved at admission).
  for (Sequence* s : running_) {
    const int64_t n = int64_t(s->tokens.size()) - s->cache.length;
    if (n <= 1 || budget <= 0) continue;
    const int64_t c = std::min(n, budget);
    out.push_back({s, s->cache.length, c, c == n});
    budget -= c;
  }
  // Admission in arrival order; a sequence that does not fit blocks the ones behind it.
  while (!waiting_.empty() && budget > 0 && int32_t(running_.size()) < o_.max_running) {
    Sequence* s = waiting_.front();
    if (!admit(s)) break;
    waiting_.pop_front();
    running_.push_back(s);
    const int64_t n = int64_t(s->tokens.size()) - s->cache.length;
    const int64_t c = std::min(n, budget);
    out.push_back({s, s->cache.length, c, c == n});
    budget -= c;
  }
  return out;
}

void Scheduler::after_forward(std::span<const ScheduledChunk> chunks) {
  if (!o_.prefix_caching) return;
  for (const ScheduledChunk& ch : chunks) {
    Sequence& s = *ch.seq;
    const int64_t full = s.cache.length / kCacheBlockSize;
    // Prefix hashes depend on the tokens only, so they survive preemption.
    for (int64_t b = int64_t(s.block_hashes.size()); b < full; ++b) {
      std::span<const int32_t> blk(s.tokens.data() + b * kCacheBlockSize, size_t(kCacheBlockSize));
      s.block_hashes.push_back(PrefixCache::chain(b == 0 ? PrefixCache::kRootHash : s.block_hashes.back(), blk));
    }
    for (int64_t b = s.registered; b < full; ++b) {
      std::span<const int32_t> blk(s.tokens.data() + b * kCacheBlockSize, size_t(kCacheBlockSize));
      const uint64_t parent = b == 0 ? PrefixCache::kRootHash : s.block_hashes[size_t(b - 1)];
      prefix_.insert(parent, blk, s.cache.blocks[size_t(b)]);
    }
    s.registered = std::max(s.registered, full);
  }
}

void Scheduler::finish(Sequence* s) {
  auto it = std::find(running_.begin(), running_.end(), s);
  if (it != running_.end()) running_.erase(it);
  auto wt = std::find(waiting_.begin(), waiting_.end(), s);
  if (wt != waiting_.end()) waiting_.erase(wt);
  release_all(alloc_, s->cache);
  s->registered = 0;
}

}  // namespace dsv2
