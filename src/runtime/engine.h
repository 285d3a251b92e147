#pragma once
// The serving engine: one thread that repeatedly schedules (continuous batching over the paged
// latent cache), runs Model::forward on the batch and samples each sequence's next token.
//
// Overlapped decoding (models whose passes are queued, the CUDA one): while a decode step whose rows
// need no logits is running, the next step of the same sequences is queued with the ids the running
// step chooses on the device as its inputs, before the host has read them; then the host reads the
// earlier step's ids and sends its events. A sequence that finishes with the earlier step has its row
// of the queued step discarded; its blocks are freed when that step is done. Steps with new prompts,
// waiting requests, cancellations, rows needing logits or a cache too full to grow without preemption
// are not overlapped.
//
// Only native types cross threads, through two kinds of queues: requests go in through submit()
// (the incoming queue), and each client request has a ResultChannel that the engine fills with
// token / finish / error events for all of its choices. Cancelling a channel (a client that went
// away, or a stop string found by the HTTP side) frees its sequences at the start of the next step.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "model/model.h"
#include "sampling/sampler.h"
#include "runtime/scheduler.h"

namespace dsv2 {

using Clock = std::chrono::steady_clock;

struct EngineEvent {
  enum class Kind { token, finish, error };
  Kind kind = Kind::token;
  int32_t choice = 0;
  SampleResult token{};       // kind == token
  bool stop_token = false;    // the token is one of the request's stop ids (it has no text)
  Clock::time_point time;     // when the engine produced it
  std::string finish_reason;  // kind == finish: "stop" (a stop id) or "length"
  std::string error;          // kind == error
};

// Events of one client request (all of its choices), engine -> HTTP thread.
class ResultChannel {
 public:
  void push(EngineEvent e);
  // Moves every queued event into `out` (appending); waits up to `timeout` while there is none.
  // Returns false when it timed out with nothing.
  bool pop_all(std::vector<EngineEvent>& out, std::chrono::milliseconds timeout);
  // Whether all choices, or this one, were cancelled (Engine::cancel).
  bool cancelled(int32_t choice) const;

 private:
  friend class Engine;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EngineEvent> q_;
  std::atomic<bool> cancelled_all_{false};
  std::atomic<bool> any_cancelled_{false};
  std::vector<int32_t> cancelled_choices_;  // guarded by mu_
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;         // generated tokens allowed (>= 1)
  SamplingParams sampling;         // its max_tokens / stop fields are not read here
  std::vector<int32_t> stop_ids;   // finish ("stop") after sampling one of these (EOS included)
  int32_t choice = 0;
};

struct EngineOptions {
  SchedulerOptions scheduler;
  int64_t max_queue = 1024;   // waiting sequences; submit() refuses beyond this
  int64_t max_context = 0;    // positions per sequence; 0 = the model's max_position_embeddings
  int32_t n_valid_vocab = 0;  // ids >= this are never sampled; 0 = the model's vocab_size
  // Overlapped decoding (above): -1 where the model queues passes, 0 never, 1 always (also on a model
  // that runs them at once, which gives the same results). DSV2_ENGINE_NO_OVERLAP=1 turns it off.
  int overlap = -1;
};

struct EngineStats {
  int64_t waiting = 0, running = 0;
  int64_t blocks_total = 0, blocks_used = 0, blocks_cached = 0, blocks_free = 0;
  int64_t prompt_tokens = 0, prefix_hit_tokens = 0, preemptions = 0;
  int64_t steps = 0, generated_tokens = 0, forward_tokens = 0;
  int64_t chained_steps = 0;  // decode steps queued before the host had read the previous step's ids
  double forward_seconds = 0, step_seconds = 0;  // time in Model::forward / in whole steps
};

class Engine {
 public:
  Engine(Model& model, EngineOptions opts);
  ~Engine();  // stops the thread; pending requests get an error event
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  void start();
  void stop();

  // Queues all choices of one client request, whose events go to `channel`. Throws dsv2::Error
  // (kind "invalid_request") for a prompt that cannot run, or (kind "overloaded") when the queue is full.
  void submit(std::vector<EngineRequest> reqs, std::shared_ptr<ResultChannel> channel);
  // Stops one choice (choice >= 0) or every choice of the request; their blocks are freed at the
  // start of the next step and no more events are sent for them.
  void cancel(ResultChannel& channel, int32_t choice = -1);

  EngineStats stats() const;
  const EngineOptions& options() const { return o_; }
  int64_t max_context() const { return max_context_; }
  int64_t cache_capacity_tokens() const { return int64_t(model_.blocks().total()) * kCacheBlockSize; }

  // One scheduling step on the calling thread (tests drive the engine this way without start()).
  // Returns false when there was nothing to run.
  bool step();

 private:
  struct Live {
    Sequence seq;
    Sampler sampler;
    EngineRequest req;
    std::shared_ptr<ResultChannel> channel;
    bool input_pending = false;  // seq.tokens.back() stands for the id a queued step has not reported yet
    bool finishing = false;      // finished (its events sent) while a queued step still computes its row
  };
  // One forward call: its chunks, what each row needs, and the chosen ids.
  struct Pass {
    std::vector<ScheduledChunk> chunks;
    std::vector<RowUse> use;
    std::vector<RowSampling> sampling;
    std::vector<int32_t> ids;
    const float* logits = nullptr;  // synchronous passes: logits_rows x vocab_size (the engine's buffer)
    bool queued = false;        // by queue_select: the ids are valid after wait_selected()
  };
  void loop();
  void take_incoming();
  void drop_cancelled();
  void release(Live& l);  // frees the sequence's blocks and forgets it
  // Sends ev (a finish or an error) and ends the sequence: released now, or, deferred, when the queued
  // step that still computes a row for it is done (Live::finishing).
  void finish(Live& l, EngineEvent ev, bool deferred = false);
  void publish_stats();
  std::unique_ptr<Pass> prepare(std::vector<ScheduledChunk> chunks);
  bool launch(Pass& p, bool chain);  // false (after error events) when the model failed
  bool can_chain(const Pass& cur);
  void step_in_flight();
  // Sends the events of a completed pass; next: the pass queued after it (chained), still running.
  void deliver(Pass& p, const Pass* next);
  void complete(Pass& p, const Pass* next);  // deliver, prefix-cache registration, retiring
  void drain();                              // waits for every queued pass

  Model& model_;
  EngineOptions o_;
  int64_t max_context_;
  int32_t n_valid_;
  Scheduler sched_;

  mutable std::mutex mu_;  // guards incoming_, stats_, wake-ups
  std::condition_variable cv_;
  std::vector<std::pair<std::vector<EngineRequest>, std::shared_ptr<ResultChannel>>> incoming_;
  int64_t incoming_count_ = 0;
  bool stop_ = false, cancel_pending_ = false;
  EngineStats stats_;
  std::thread thread_;

  // Engine thread only.
  std::unordered_map<uint64_t, std::unique_ptr<Live>> live_;
  uint64_t next_id_ = 1;
  int64_t steps_ = 0, generated_ = 0, forward_tokens_ = 0, chained_ = 0;
  double forward_seconds_ = 0, step_seconds_ = 0;
  std::unique_ptr<Pass> in_flight_;  // a queued pass whose ids have not been read
  std::vector<float> logits_;        // the synchronous pass's rows (kept: batches of rows are large)
  bool overlap_ = false;
  // DSV2_ENGINE_ROWS=1: every sampling row crosses whole and is sampled on the host (A/B measurements).
  bool rows_always_ = std::getenv("DSV2_ENGINE_ROWS") != nullptr;
};

}  // namespace dsv2
