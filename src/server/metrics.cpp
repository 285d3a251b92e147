#include "server/metrics.h"

#include <fmt/format.h>

namespace dsv2::server {

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  std::lock_guard<std::mutex> lk(mu_);
  ++counts_[i];
  sum_ += v;
  ++n_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lk(mu_);
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, sum_, name, n_);
}

Metrics::Metrics() = default;

void Metrics::request_done(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lk(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::add_tokens(int64_t prompt, int64_t generated) {
  prompt_tokens_ += prompt;
  generated_tokens_ += generated;
}

std::string Metrics::render(const EngineStats& s) const {
  std::string out;
  auto one = [&](const char* name, const char* type, const char* help, auto value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
  };
  out += "# HELP dsv2_requests_total HTTP requests handled, by endpoint and status code.\n"
         "# TYPE dsv2_requests_total counter\n";
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [k, v] : requests_)
      out += fmt::format("dsv2_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first, k.second, v);
  }
  one("dsv2_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", prompt_tokens_.load());
  one("dsv2_generation_tokens_total", "counter", "Tokens generated and delivered to clients.", generated_tokens_.load());
  one("dsv2_queue_length", "gauge", "Sequences waiting for admission.", s.waiting);
  one("dsv2_running_batch_size", "gauge", "Sequences in the running batch.", s.running);
  one("dsv2_cache_blocks_total", "gauge", "Blocks of 64 tokens in the latent cache.", s.blocks_total);
  one("dsv2_cache_blocks_used", "gauge", "Cache blocks held by running or preempted requests.", s.blocks_used);
  one("dsv2_cache_blocks_cached", "gauge", "Cache blocks held only by the prefix cache (reusable, evictable).",
      s.blocks_cached);
  one("dsv2_cache_blocks_free", "gauge", "Cache blocks on the free list.", s.blocks_free);
  one("dsv2_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", s.prompt_tokens);
  one("dsv2_prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", s.prefix_hit_tokens);
  one("dsv2_prefix_cache_hit_rate", "gauge", "Share of prompt tokens found in the prefix cache.",
      s.prompt_tokens > 0 ? double(s.prefix_hit_tokens) / double(s.prompt_tokens) : 0.0);
  one("dsv2_preemptions_total", "counter", "Sequences preempted (blocks returned, recomputed later).", s.preemptions);
  one("dsv2_engine_steps_total", "counter", "Forward steps run by the engine.", s.steps);
  one("dsv2_engine_chained_steps_total", "counter",
      "Decode steps queued before the previous step's tokens were read (overlapped).", s.chained_steps);
  one("dsv2_engine_forward_tokens_total", "counter", "Tokens run through the model (prompt chunks and decodes).",
      s.forward_tokens);
  one("dsv2_engine_forward_seconds_total", "counter", "Time spent in the model's forward pass.", s.forward_seconds);
  one("dsv2_engine_step_seconds_total", "counter", "Time spent in engine steps (schedule, forward, sample).",
      s.step_seconds);
  ttft.render(out, "dsv2_time_to_first_token_seconds", "Time from request arrival to its first generated token.");
  itl.render(out, "dsv2_inter_token_latency_seconds", "Time between consecutive generated tokens of a sequence.");
  e2e.render(out, "dsv2_request_duration_seconds", "Time from request arrival to its last token.");
  return out;
}

}  // namespace dsv2::server
