#include "runtime/engine.h"

#include <algorithm>

#include "common/error.h"
#include "common/log.h"
#include "runtime/generate.h"

namespace dsv2 {

void ResultChannel::push(EngineEvent e) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(std::move(e));
  }
  cv_.notify_all();
}

bool ResultChannel::pop_all(std::vector<EngineEvent>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  if (q_.empty()) cv_.wait_for(lk, timeout, [&] { return !q_.empty(); });
  if (q_.empty()) return false;
  for (auto& e : q_) out.push_back(std::move(e));
  q_.clear();
  return true;
}

bool ResultChannel::cancelled(int32_t choice) const {
  if (cancelled_all_.load(std::memory_order_relaxed)) return true;
  if (!any_cancelled_.load(std::memory_order_relaxed)) return false;
  std::lock_guard<std::mutex> lk(mu_);
  return std::find(cancelled_choices_.begin(), cancelled_choices_.end(), choice) != cancelled_choices_.end();
}

Engine::Engine(Model& model, EngineOptions opts)
    : model_(model),
      o_(opts),
      max_context_(opts.max_context > 0 ? std::min(opts.max_context, model.config().max_position_embeddings)
                                        : model.config().max_position_embeddings),
      n_valid_(opts.n_valid_vocab > 0 ? std::min<int32_t>(opts.n_valid_vocab, int32_t(model.config().vocab_size))
                                      : int32_t(model.config().vocab_size)),
      sched_(model.blocks(), opts.scheduler) {
  overlap_ = (o_.overlap < 0 ? model.queues_passes() : o_.overlap > 0) &&
             std::getenv("DSV2_ENGINE_NO_OVERLAP") == nullptr;
  publish_stats();
}

Engine::~Engine() {
  stop();
  try {
    drain();  // no queued pass may still write into this engine's buffers
  } catch (const std::exception& e) {
    log::error("engine", "waiting for the last step failed: {}", e.what());
  }
  for (auto& [id, l] : live_) {
    EngineEvent ev;
    ev.kind = EngineEvent::Kind::error;
    ev.choice = l->req.choice;
    ev.error = "the server is shutting down";
    l->channel->push(std::move(ev));
    sched_.finish(&l->seq);
  }
  live_.clear();
}

void Engine::start() {
  std::lock_guard<std::mutex> lk(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Engine::submit(std::vector<EngineRequest> reqs, std::shared_ptr<ResultChannel> channel) {
  DSV2_CHECK(channel != nullptr);
  const int64_t V = model_.config().vocab_size;
  const int64_t cap = cache_capacity_tokens();
  for (const EngineRequest& r : reqs) {
    if (r.prompt.empty()) throw Error("the prompt is empty: at least one token is needed", "invalid_request");
    if (r.max_tokens < 1) throw Error(fmt::format("max_tokens must be at least 1, got {}", r.max_tokens), "invalid_request");
    for (int32_t id : r.prompt)
      if (id < 0 || id >= V)
        throw Error(fmt::format("token id {} is outside the vocabulary [0, {})", id, V), "invalid_request");
    const int64_t need = int64_t(r.prompt.size()) + r.max_tokens;
    if (need > max_context_)
      throw Error(fmt::format("this model's maximum context length is {} tokens, but {} were requested ({} in the "
                              "prompt, {} to generate)",
                              max_context_, need, r.prompt.size(), r.max_tokens),
                  "context_length_exceeded");
    if (need > cap)
      throw Error(fmt::format("the request needs {} tokens of cache but the whole cache holds {}", need, cap),
                  "context_length_exceeded");
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) throw Error("the server is shutting down", "overloaded");
    if (stats_.waiting + incoming_count_ + int64_t(reqs.size()) > o_.max_queue)
      throw Error(fmt::format("the request queue is full ({} waiting)", stats_.waiting + incoming_count_), "overloaded");
    incoming_count_ += int64_t(reqs.size());
    incoming_.emplace_back(std::move(reqs), std::move(channel));
  }
  cv_.notify_all();
}

void Engine::cancel(ResultChannel& channel, int32_t choice) {
  if (choice < 0) {
    channel.cancelled_all_.store(true);
  } else {
    std::lock_guard<std::mutex> lk(channel.mu_);
    channel.cancelled_choices_.push_back(choice);
    channel.any_cancelled_.store(true);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    cancel_pending_ = true;
  }
  cv_.notify_all();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void Engine::take_incoming() {
  decltype(incoming_) batch;
  {
    std::lock_guard<std::mutex> lk(mu_);
    batch.swap(incoming_);
    incoming_count_ = 0;
    cancel_pending_ = false;
  }
  for (auto& [reqs, channel] : batch) {
    for (EngineRequest& r : reqs) {
      const uint64_t id = next_id_++;
      auto l = std::make_unique<Live>(Live{Sequence{}, Sampler(r.sampling, n_valid_), std::move(r), channel});
      l->seq.id = id;
      l->seq.tokens = l->req.prompt;
      l->seq.prompt_len = int64_t(l->req.prompt.size());
      sched_.add(&l->seq);
      live_.emplace(id, std::move(l));
    }
  }
}

void Engine::release(Live& l) {
  sched_.finish(&l.seq);
  live_.erase(l.seq.id);  // destroys l
}

void Engine::finish(Live& l, EngineEvent ev, bool deferred) {
  ev.choice = l.req.choice;
  ev.time = Clock::now();
  l.channel->push(std::move(ev));
  if (deferred)
    l.finishing = true;
  else
    release(l);
}

void Engine::drop_cancelled() {
  // Cancelled requests give their blocks back before anything is scheduled.
  for (auto it = live_.begin(); it != live_.end();) {
    Live& l = *it->second;
    ++it;
    if (l.channel->cancelled(l.req.choice)) release(l);
  }
}

std::unique_ptr<Engine::Pass> Engine::prepare(std::vector<ScheduledChunk> chunks) {
  auto p = std::make_unique<Pass>();
  p->chunks = std::move(chunks);
  const size_t n = p->chunks.size();
  // Greedy rows without logprobs need only their argmax, sampled rows without penalties or logprobs
  // only a draw where the backend draws itself (the CUDA one: no row is copied); rows that do not
  // sample need nothing.
  p->use.assign(n, RowUse::none);
  p->ids.assign(n, 0);
  p->sampling.assign(n, RowSampling{});
  for (size_t i = 0; i < n; ++i) {
    if (!p->chunks[i].sample) continue;
    Sampler& s = live_.at(p->chunks[i].seq->id)->sampler;
    p->use[i] = rows_always_ ? RowUse::logits : row_use_for(s, model_, p->sampling[i]);
  }
  return p;
}

bool Engine::launch(Pass& p, bool chain) {
  std::vector<SeqChunk> batch;
  batch.reserve(p.chunks.size());
  for (const ScheduledChunk& ch : p.chunks)
    batch.push_back(
        {&ch.seq->cache, std::span<const int32_t>(ch.seq->tokens.data() + ch.start, size_t(ch.count)), false});
  const bool queue =
      overlap_ && std::none_of(p.use.begin(), p.use.end(), [](RowUse u) { return u == RowUse::logits; });
  const Clock::time_point t0 = Clock::now();
  try {
    if (queue) {
      model_.queue_select(batch, p.use.data(), p.sampling.data(), n_valid_, p.ids.data(), chain);
      p.queued = true;
    } else {
      logits_.resize(size_t(Model::logits_rows(batch) * model_.config().vocab_size));
      model_.forward_select(batch, p.use.data(), p.sampling.data(), n_valid_, logits_.data(), p.ids.data());
      p.logits = logits_.data();
    }
  } catch (const std::exception& e) {
    log::error("engine", "forward failed for a batch of {} sequences: {}", p.chunks.size(), e.what());
    drain();
    for (const ScheduledChunk& ch : p.chunks) {
      EngineEvent ev;
      ev.kind = EngineEvent::Kind::error;
      ev.error = e.what();
      finish(*live_.at(ch.seq->id), std::move(ev));
    }
    return false;
  }
  forward_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  for (const ScheduledChunk& ch : p.chunks) forward_tokens_ += ch.count;
  return true;
}

void Engine::drain() {
  while (model_.wait_selected()) {
  }
}

bool Engine::step() {
  const Clock::time_point t_step = Clock::now();
  take_incoming();
  if (in_flight_) {
    step_in_flight();
  } else {
    drop_cancelled();
    std::vector<ScheduledChunk> chunks = sched_.schedule();
    if (chunks.empty()) {
      publish_stats();
      return false;
    }
    std::unique_ptr<Pass> p = prepare(std::move(chunks));
    if (launch(*p, false)) {
      if (p->queued)
        in_flight_ = std::move(p);  // the next step() queues the step after it, then reads its ids
      else
        complete(*p, nullptr);
    }
  }
  step_seconds_ += std::chrono::duration<double>(Clock::now() - t_step).count();
  publish_stats();
  return true;
}

bool Engine::can_chain(const Pass& cur) {
  // The next step would be exactly one decode row for each sequence of this one, in the same order:
  // nothing waits for admission, every running sequence is in this step, no blocks have to be taken
  // from a running sequence, and none of them surely ends with this step's token.
  if (!overlap_ || !cur.queued || sched_.waiting() > 0 || sched_.running() != cur.chunks.size()) return false;
  int64_t new_blocks = 0;
  for (size_t i = 0; i < cur.chunks.size(); ++i) {
    const ScheduledChunk& ch = cur.chunks[i];
    if (ch.count != 1 || !ch.sample || (cur.use[i] != RowUse::greedy && cur.use[i] != RowUse::sample)) return false;
    const Live& l = *live_.at(ch.seq->id);
    if (l.finishing || l.input_pending || l.channel->cancelled(l.req.choice)) return false;
    if (l.seq.generated() + 1 >= l.req.max_tokens || int64_t(l.seq.tokens.size()) + 1 >= max_context_) return false;
    if (l.seq.cache.length + 1 > l.seq.cache.capacity()) ++new_blocks;
  }
  BlockAllocator& a = model_.blocks();
  return new_blocks <= int64_t(a.free_count()) + int64_t(sched_.prefix_cache().evictable());
}

void Engine::step_in_flight() {
  std::unique_ptr<Pass> cur = std::move(in_flight_);
  std::unique_ptr<Pass> next;
  if (can_chain(*cur)) {
    for (const ScheduledChunk& ch : cur->chunks) {
      Live& l = *live_.at(ch.seq->id);
      l.seq.tokens.push_back(0);  // the id this step is choosing: the next step's input on the device
      l.input_pending = true;
    }
    // can_chain leaves the scheduler one choice: a decode row for every running sequence, in order
    std::vector<ScheduledChunk> chunks = sched_.schedule();
    bool same = chunks.size() == cur->chunks.size();
    for (size_t i = 0; same && i < chunks.size(); ++i)
      same = chunks[i].seq == cur->chunks[i].seq && chunks[i].count == 1 && chunks[i].sample;
    DSV2_CHECK(same, "engine: the step scheduled ahead is not the one chained on the running step");
    next = prepare(std::move(chunks));
    if (!launch(*next, true)) return;  // every sequence of both steps got an error event
    ++chained_;
  }
  const Clock::time_point t0 = Clock::now();
  model_.wait_selected();  // this step's ids (passes complete in order)
  forward_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  complete(*cur, next.get());
  in_flight_ = std::move(next);
}

void Engine::deliver(Pass& p, const Pass* next) {
  ++steps_;
  const int64_t V = model_.config().vocab_size;
  const Clock::time_point now = Clock::now();
  for (size_t i = 0; i < p.chunks.size(); ++i) {
    if (!p.chunks[i].sample) continue;
    Live& l = *live_.at(p.chunks[i].seq->id);
    if (l.finishing) continue;  // finished with the step before: this row is not used
    if (l.channel->cancelled(l.req.choice)) {  // no more events; freed now or when the queued step is done
      if (next)
        l.finishing = true;
      else
        release(l);
      continue;
    }
    EngineEvent ev;
    ev.kind = EngineEvent::Kind::token;
    ev.choice = l.req.choice;
    ev.time = now;
    const size_t known = l.seq.tokens.size() - (l.input_pending ? 1 : 0);
    const std::span<const int32_t> all(l.seq.tokens.data(), known);
    const std::span<const float> row =
        p.logits ? std::span<const float>(p.logits + i * size_t(V), size_t(V)) : std::span<const float>();
    ev.token = row_choice(p.use[i], p.ids[i], l.sampler, row, all.first(size_t(l.seq.prompt_len)),
                          all.subspan(size_t(l.seq.prompt_len)));
    const int32_t id = ev.token.id;
    ev.stop_token = std::find(l.req.stop_ids.begin(), l.req.stop_ids.end(), id) != l.req.stop_ids.end();
    const bool stop_token = ev.stop_token;
    if (l.input_pending) {
      l.seq.tokens.back() = id;
      l.input_pending = false;
    } else {
      l.seq.tokens.push_back(id);
    }
    ++generated_;
    l.channel->push(std::move(ev));
    const char* reason = nullptr;
    if (stop_token)
      reason = "stop";
    else if (l.seq.generated() >= l.req.max_tokens || int64_t(l.seq.tokens.size()) >= max_context_)
      reason = "length";
    if (reason) {
      EngineEvent fin;
      fin.kind = EngineEvent::Kind::finish;
      fin.finish_reason = reason;
      finish(l, std::move(fin), next != nullptr);  // with next, it still computes a row for it
    }
  }
}

void Engine::complete(Pass& p, const Pass* next) {
  if (next) {
    // Nothing of this pass is freed now (its sequences all have a row in the queued step); the
    // placeholders resolved, the newly filled blocks can be registered.
    deliver(p, next);
    sched_.after_forward(p.chunks);
    return;
  }
  std::vector<uint64_t> ids;
  for (const ScheduledChunk& ch : p.chunks) ids.push_back(ch.seq->id);
  sched_.after_forward(p.chunks);
  deliver(p, nullptr);
  // sequences that finished with the step before and had their last row in this one
  for (uint64_t id : ids) {
    auto it = live_.find(id);
    if (it != live_.end() && it->second->finishing) release(*it->second);
  }
}

void Engine::publish_stats() {
  EngineStats s;
  s.waiting = int64_t(sched_.waiting());
  s.running = int64_t(sched_.running());
  BlockAllocator& a = model_.blocks();
  s.blocks_total = a.total();
  s.blocks_free = a.free_count();
  s.blocks_cached = sched_.prefix_cache().evictable();
  s.blocks_used = s.blocks_total - s.blocks_free - s.blocks_cached;
  const SchedulerCounters& c = sched_.counters();
  s.prompt_tokens = c.prompt_tokens;
  s.prefix_hit_tokens = c.prefix_hit_tokens;
  s.preemptions = c.preemptions;
  s.steps = steps_;
  s.chained_steps = chained_;
  s.generated_tokens = generated_;
  s.forward_tokens = forward_tokens_;
  s.forward_seconds = forward_seconds_;
  s.step_seconds = step_seconds_;
  std::lock_guard<std::mutex> lk(mu_);
  stats_ = s;
}

void Engine::loop() {
  log::info("engine", "scheduler thread started (batch up to {} sequences, {} tokens per step, {} cache blocks, {})",
            o_.scheduler.max_running, o_.scheduler.max_batch_tokens, model_.blocks().total(),
            overlap_ ? "decode steps overlapped" : "one step at a time");
  while (true) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !incoming_.empty() || cancel_pending_ || !sched_.idle(); });
      if (stop_) break;
    }
    try {
      step();
    } catch (const std::exception& e) {
      // An engine invariant broke: fail every request rather than leave clients hanging.
      log::error("engine", "step failed: {}", e.what());
      try {
        drain();
      } catch (const std::exception&) {
      }
      in_flight_.reset();
      std::vector<uint64_t> ids;
      for (auto& [id, l] : live_) ids.push_back(id);
      for (uint64_t id : ids) {
        EngineEvent ev;
        ev.kind = EngineEvent::Kind::error;
        ev.error = e.what();
        finish(*live_.at(id), std::move(ev));
      }
      publish_stats();
    }
  }
}

}  // namespace dsv2
