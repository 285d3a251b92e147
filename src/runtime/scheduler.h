#pragma once
// Continuous-batching scheduler (engine thread only). Each step it picks work for one forward
// call: one token for every running sequence that is decoding, then chunks of pending prompt
// tokens (chunked prefill) within a token budget, then admits waiting sequences in arrival order.
//
// Cache policy: a sequence is admitted only when blocks for all its known tokens can be reserved
// (after taking its prompt prefix from the prefix cache); decoding takes one more block every 64
// tokens. When no block is left even after evicting unused prefix-cache blocks, the most recently
// admitted running sequence is preempted: its blocks are returned and it goes back to the front
// of the queue, to be recomputed from its tokens (prompt + generated so far) when it is readmitted.
#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "runtime/block_allocator.h"
#include "runtime/prefix_cache.h"

namespace dsv2 {

struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;        // prompt followed by the tokens generated so far
  int64_t prompt_len = 0;
  SequenceCache cache;                // cache.length = positions already computed
  std::vector<uint64_t> block_hashes; // prefix hash of each full block of `tokens` seen so far
  int64_t registered = 0;             // leading blocks of cache.blocks known to the prefix cache
  int64_t cached_tokens = 0;          // prompt tokens taken from the prefix cache at first admission
  int64_t preemptions = 0;
  bool admitted_once = false;
  int64_t generated() const { return int64_t(tokens.size()) - prompt_len; }
};

struct ScheduledChunk {
  Sequence* seq = nullptr;
  int64_t start = 0, count = 0;  // tokens [start, start + count) of seq->tokens
  bool sample = false;           // the chunk ends at the last known token: sample the next one
};

struct SchedulerOptions {
  int32_t max_running = 64;        // sequences in the running batch
  int64_t max_batch_tokens = 512;  // tokens per forward call (decodes first, then prefill chunks)
  bool prefix_caching = true;
};

struct SchedulerCounters {
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;      // prompt tokens at first admission
  int64_t prefix_hit_tokens = 0;  // of which were found in the prefix cache
};

class Scheduler {
 public:
  Scheduler(BlockAllocator& alloc, SchedulerOptions opts);
  ~Scheduler();

  void add(Sequence* s);  // to the back of the waiting queue
  std::vector<ScheduledChunk> schedule();
  // After the forward call: registers newly filled full blocks with the prefix cache.
  void after_forward(std::span<const ScheduledChunk> chunks);
  // Removes a sequence (running or waiting) and returns its blocks.
  void finish(Sequence* s);

  size_t waiting() const { return waiting_.size(); }
  size_t running() const { return running_.size(); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  const SchedulerCounters& counters() const { return counters_; }
  PrefixCache& prefix_cache() { return prefix_; }
  BlockAllocator& allocator() { return alloc_; }

 private:
  bool grow(Sequence& s, int64_t length);  // reserve, evicting prefix-cache blocks if needed
  void preempt(Sequence* s);
  bool admit(Sequence* s);

  BlockAllocator& alloc_;
  SchedulerOptions o_;
  PrefixCache prefix_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in admission order
  SchedulerCounters counters_;
};

}  // namespace dsv2
