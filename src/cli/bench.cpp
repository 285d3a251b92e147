// dsv2 bench: throughput of prefill and decode on a real checkpoint (--model) or on random weights
// of a real shape (--synthetic lite|v2|CONFIG.json; generated on the GPU for --device cuda, in RAM
// for --device cpu). Prints one JSON line per measurement on stdout: tokens/s, ms per step, the
// bytes a decode step must read (weights it touches + latent cache), the bandwidth that implies and
// its share of the copy bandwidth measured in the same run (the roofline).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/model_args.h"
#include "common/error.h"
#include "common/log.h"
#include "common/thread_pool.h"
#include "model/config.h"
#include "model/model.h"
#include "model/weights.h"
#include "runtime/engine.h"
#if defined(DSV2_HAVE_CUDA)
#include "backend/cuda/cuda_model.h"
#endif

namespace dsv2::cli {
namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

struct BenchArgs {
  ModelArgs model;
  std::string synthetic;            // lite | v2 | CONFIG.json
  std::string batches = "1,8,32,128";
  int prompt = 128;
  int gen = 64;
  int prefill = 0;                  // > 0: also one sequence prefill of this many tokens
  int prefill_reps = 3;             // timed prefills after the cold one (median reported)
  std::string contexts;             // decode at these context lengths (batch 1)
  bool context_prefill = false;     // fill long contexts by a real (chunked) prefill, also for random weights
  int layers = 0;                   // > 0: override num_hidden_layers (a scaled V2 on one GPU)
  uint64_t seed = 1;
  int64_t cache_tokens = 0;
  bool no_graphs = false;
  bool sync_steps = false;          // the host reads each step's ids before queuing the next
  bool engine = false;              // also decode each batch through the serving engine
  float engine_temperature = 0.0f;  // its requests' sampling (0: greedy)
  float engine_top_p = 1.0f;
  int warmup = 3;                   // untimed decode steps (graph capture; a chained step first runs eagerly)
};

std::vector<int64_t> parse_list(const std::string& s, const char* opt) {
  std::vector<int64_t> out;
  if (s.empty()) return out;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    const std::string tok = s.substr(i, j - i);
    char* end = nullptr;
    const long long v = std::strtoll(tok.c_str(), &end, 10);
    if (tok.empty() || *end != '\0' || v <= 0) fail("{}: '{}' is not a positive integer", opt, tok);
    out.push_back(v);
    i = j + 1;
  }
  return out;
}

// Published shapes (reference section 1).
json shape_json(const std::string& name) {
  json j = {{"model_type", "deepseek_v2"},
            {"vocab_size", 102400},
            {"max_position_embeddings", 163840},
            {"rms_norm_eps", 1e-6},
            {"rope_theta", 10000},
            {"rope_scaling",
             {{"type", "yarn"},
              {"factor", 40},
              {"original_max_position_embeddings", 4096},
              {"beta_fast", 32},
              {"beta_slow", 1},
              {"mscale", 0.707},
              {"mscale_all_dim", 0.707}}},
            {"kv_lora_rank", 512},
            {"qk_nope_head_dim", 128},
            {"qk_rope_head_dim", 64},
            {"v_head_dim", 128},
            {"norm_topk_prob", false},
            {"scoring_func", "softmax"},
            {"first_k_dense_replace", 1},
            {"moe_layer_freq", 1},
            {"tie_word_embeddings", false},
            {"bos_token_id", 100000},
            {"eos_token_id", 100001},
            {"torch_dtype", "bfloat16"}};
  if (name == "lite") {
    j.update({{"hidden_size", 2048}, {"num_hidden_layers", 27}, {"num_attention_heads", 16},
              {"num_key_value_heads", 16}, {"q_lora_rank", nullptr}, {"intermediate_size", 10944},
              {"moe_intermediate_size", 1408}, {"n_routed_experts", 64}, {"n_shared_experts", 2},
              {"num_experts_per_tok", 6}, {"topk_method", "greedy"}, {"n_group", 1}, {"topk_group", 1},
              {"routed_scaling_factor", 1.0}});
  } else if (name == "v2") {
    j.update({{"hidden_size", 5120}, {"num_hidden_layers", 60}, {"num_attention_heads", 128},
              {"num_key_value_heads", 128}, {"q_lora_rank", 1536}, {"intermediate_size", 12288},
              {"moe_intermediate_size", 1536}, {"n_routed_experts", 160}, {"n_shared_experts", 2},
              {"num_experts_per_tok", 6}, {"topk_method", "group_limited_greedy"}, {"n_group", 8},
              {"topk_group", 3}, {"routed_scaling_factor", 16.0}});
  } else {
    std::ifstream in(name);
    if (!in) fail("--synthetic: '{}' is neither lite, v2 nor a readable config.json", name);
    try {
      j = json::parse(in);
    } catch (const std::exception& e) {
      fail("--synthetic {}: not valid JSON: {}", name, e.what());
    }
  }
  return j;
}

// Host memcpy bandwidth over all threads, (bytes read + written) / s.
double host_copy_bandwidth() {
  const size_t bytes = size_t(1) << 30;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  auto& pool = ThreadPool::global();
  const int64_t pieces = pool.size() * 4;
  auto once = [&] {
    pool.parallel_for(pieces, [&](int64_t s, int64_t e, int) {
      const size_t lo = bytes * size_t(s) / size_t(pieces), hi = bytes * size_t(e) / size_t(pieces);
      std::memcpy(b.data() + lo, a.data() + lo, hi - lo);
    });
  };
  once();
  const int reps = 5;
  auto t0 = clock_type::now();
  for (int i = 0; i < reps; ++i) once();
  const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  return 2.0 * double(bytes) * reps / s;
}

// Bytes of bf16 weights one decode step over `batch` sequences reads: everything but the routed
// experts, plus the experts the batch is expected to touch under uniform routing.
double decode_weight_bytes(const ModelConfig& c, int64_t batch) {
  const double H = double(c.hidden_size), heads = double(c.num_attention_heads);
  const double qd = double(c.qk_head_dim()), D = double(c.kv_cache_dim());
  double p = double(c.vocab_size) * H + batch * H;  // lm_head + embedding rows
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (c.q_lora_rank > 0) p += double(c.q_lora_rank) * (H + heads * qd);
    else p += heads * qd * H;
    p += D * H + heads * double(c.qk_nope_head_dim + c.v_head_dim) * double(c.kv_lora_rank) +
         H * heads * double(c.v_head_dim);
    if (!c.is_moe_layer(l)) {
      p += 3.0 * double(c.intermediate_size) * H;
    } else {
      const double E = double(c.n_routed_experts), K = double(c.num_experts_per_tok);
      const double touched = E * (1.0 - std::pow(1.0 - K / E, double(batch)));
      p += E * H + 3.0 * double(c.n_shared_experts * c.moe_intermediate_size) * H +
           touched * 3.0 * double(c.moe_intermediate_size) * H;
    }
  }
  return p * 2.0;
}

class Runner {
 public:
  Runner(Model& m, int device, bool sync_steps) : m_(m) {
#if defined(DSV2_HAVE_CUDA)
    if (device >= 0) cm_ = cuda::as_cuda(&m);
#endif
    (void)device;
#if defined(DSV2_HAVE_CUDA)
    overlap_ = cm_ != nullptr && !sync_steps;
#endif
    (void)sync_steps;
  }
  // Whether decode() queues each GPU step before the host has read the previous one's ids.
  bool overlap() const { return overlap_; }
  // n greedy decode steps of `batch` (one-token chunks reading `cur`), each step's input the ids of the
  // one before; `cur` ends with the last step's ids. With overlap, step k + 1 is queued on the GPU
  // (its inputs chained from step k's ids on the device) before the host waits for step k's ids, the
  // way an engine that overlaps scheduling with the GPU runs; `chained`: the last GPU pass sampled
  // exactly this batch, so the first step may chain from it too.
  void decode(std::vector<SeqChunk>& batch, std::vector<int32_t>& cur, int n, bool chained) {
    std::vector<int32_t> next;
#if defined(DSV2_HAVE_CUDA)
    if (cm_ && overlap_) {
      for (auto& b : bufs_) b.resize(batch.size());
      for (int k = 0; k < n; ++k) {
        cm_->queue_sample(batch, cuda::SampleOptions{}, step_++, bufs_[k % 2].data(), chained || k > 0);
        if (k > 0) cm_->wait_sampled();  // step k - 1's ids reach the host while step k runs
      }
      if (n > 0) {
        cm_->wait_sampled();
        cur = bufs_[(n - 1) % 2];
      }
      return;
    }
#endif
    (void)chained;
    for (int k = 0; k < n; ++k) {
      step(batch, next);
      cur = next;
    }
  }
  // One forward; next tokens (greedy) written to `next`, one per sequence.
  void step(std::vector<SeqChunk>& batch, std::vector<int32_t>& next) {
    next.resize(batch.size());
#if defined(DSV2_HAVE_CUDA)
    if (cm_) {
      cm_->forward_sample(batch, cuda::SampleOptions{}, step_++, next.data());
      return;
    }
#endif
    const int64_t V = m_.config().vocab_size;
    logits_.resize(size_t(Model::logits_rows(batch)) * size_t(V));
    m_.forward(batch, logits_.data());
    for (size_t i = 0; i < batch.size(); ++i) {
      const float* l = logits_.data() + i * size_t(V);
      next[i] = int32_t(std::max_element(l, l + V) - l);
    }
  }

 private:
  Model& m_;
#if defined(DSV2_HAVE_CUDA)
  cuda::CudaModel* cm_ = nullptr;
#endif
  std::vector<float> logits_;
  uint64_t step_ = 0;
  bool overlap_ = false;
  std::vector<int32_t> bufs_[2];
};

struct Seqs {
  Model& m;
  std::vector<SequenceCache> s;
  Seqs(Model& model, int64_t n, int64_t len) : m(model), s(size_t(n)) {
    for (auto& q : s)
      if (!reserve(m.blocks(), q, len))
        fail("the latent cache ({} tokens) cannot hold {} sequences of {} tokens", m.blocks().total() * kCacheBlockSize,
             n, len);
  }
  ~Seqs() {
    for (auto& q : s) release_all(m.blocks(), q);
  }
};

std::vector<int32_t> prompt_ids(int64_t n, int64_t seq, int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t((i * 7919 + seq * 104729 + 3) % std::min<int64_t>(vocab, 100000));
  return ids;
}

// How many different ids (the last step's: a random-weight model's greedy ids can collapse onto few).
int64_t distinct(std::vector<int32_t> ids) {
  std::sort(ids.begin(), ids.end());
  return std::unique(ids.begin(), ids.end()) - ids.begin();
}

void emit(const json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// Decode of B requests (greedy, or sampled with one seed each) through the serving engine (scheduler,
// per-request sampling, stop checks, result channels), as `dsv2 serve` runs them without the HTTP side:
// the figure a server user gets.
// All prompts are admitted in the first step (so that the requests decode in step), then timed from
// the step after which every request has `warmup` tokens until all have finished.
json engine_decode(Model& model, int64_t B, int prompt, int gen, int warmup, float temperature, float top_p) {
  const int64_t V = model.config().vocab_size;
  EngineOptions eo;
  eo.scheduler.max_running = int32_t(std::max<int64_t>(B, 64));
  eo.scheduler.max_batch_tokens = std::max<int64_t>(B * (prompt + 1), 512);
  Engine e(model, eo);
  std::vector<std::shared_ptr<ResultChannel>> chans;
  for (int64_t i = 0; i < B; ++i) {
    EngineRequest r;
    r.prompt = prompt_ids(prompt, 1000 + i, V);
    r.max_tokens = warmup + gen;
    r.sampling.temperature = temperature;
    r.sampling.top_p = top_p;
    r.sampling.seed = uint64_t(i);
    r.sampling.has_seed = true;
    chans.push_back(std::make_shared<ResultChannel>());
    e.submit({r}, chans.back());
  }
  // Until every request has `warmup` tokens the events are read after each step; then the engine runs
  // alone until it has nothing left (a server's HTTP threads read the events on their own threads).
  std::vector<int64_t> got(size_t(B), 0);
  std::vector<int32_t> last(size_t(B), -1);
  int64_t warm_tokens = 0, steps = 0;
  std::vector<EngineEvent> evs;
  auto read_events = [&] {
    for (int64_t i = 0; i < B; ++i) {
      evs.clear();
      chans[size_t(i)]->pop_all(evs, std::chrono::milliseconds(0));
      for (const EngineEvent& ev : evs) {
        if (ev.kind == EngineEvent::Kind::error) fail("engine bench: {}", ev.error);
        if (ev.kind != EngineEvent::Kind::token) continue;
        ++got[size_t(i)];
        last[size_t(i)] = ev.token.id;
      }
    }
    return *std::min_element(got.begin(), got.end());
  };
  while (read_events() < warmup)
    if (!e.step()) fail("engine bench: the engine stopped before every request had {} tokens", warmup);
  for (int64_t g : got) warm_tokens += g;
  const clock_type::time_point t0 = clock_type::now();
  const EngineStats s0 = e.stats();
  while (e.step()) ++steps;
  const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  read_events();
  int64_t timed_tokens = -warm_tokens;
  for (int64_t g : got) timed_tokens += g;
  const int64_t missing = B * int64_t(warmup + gen) - warm_tokens - timed_tokens;
  if (missing != 0) fail("engine bench: {} tokens missing", missing);
  const EngineStats s1 = e.stats();
  const double per = steps ? 1e3 / double(steps) : 0.0;
  // forward: inside the model's calls (host preparation; forward_select's GPU work and the ids' copy,
  // or queuing a pass and waiting for the one before it); the rest of a step is the engine's own host
  // work (scheduling, events). chained_steps: decode steps queued before the last one's ids were read.
  return {{"bench", "engine_decode"}, {"batch", B}, {"prompt", prompt}, {"gen", gen}, {"temperature", temperature},
          {"top_p", top_p}, {"decode_tok_s", double(timed_tokens) / s}, {"steps", steps}, {"ms_per_step", s * per},
          {"forward_ms_per_step", (s1.forward_seconds - s0.forward_seconds) * per},
          {"engine_step_ms_per_step", (s1.step_seconds - s0.step_seconds) * per},
          {"chained_steps", s1.chained_steps - s0.chained_steps},
          {"distinct_last_ids", distinct(last)}};
}

int run_bench(BenchArgs& a) {
  const int device = parse_device(a.model.device);
  if (!a.model.model.empty() && !a.synthetic.empty()) fail("bench takes --model DIR or --synthetic, not both");
  if (a.prompt <= 0 || a.gen <= 0) fail("--prompt and --gen must be positive");
  const auto batches = parse_list(a.batches, "--batch");
  const auto contexts = parse_list(a.contexts, "--context");
  int64_t need = 0;
  for (auto b : batches) need = std::max(need, b * (a.prompt + a.gen + kCacheBlockSize));
  for (auto c : contexts) need = std::max(need, c + a.gen + kCacheBlockSize);
  need = std::max<int64_t>(need, a.prefill + 1 + 2 * kCacheBlockSize);
  CacheOptions cache{a.cache_tokens, 0.9};
  if (device < 0 && cache.max_tokens == 0) cache.max_tokens = need;

  std::unique_ptr<Model> model;
  std::shared_ptr<ModelWeights> weights;
  std::string source;
  if (a.synthetic.empty()) {  // a checkpoint: --model, or the embedded default model
    LoadedModel lm = load_model(a.model, cache);
    weights = lm.weights;
    model = std::move(lm.model);
    source = lm.dir.string();
  } else {
    json j = shape_json(a.synthetic);
    if (a.layers > 0) j["num_hidden_layers"] = a.layers;
    ModelConfig c = parse_config(j, "--synthetic " + a.synthetic);
    source = "synthetic " + a.synthetic + (a.layers > 0 ? fmt::format(" ({} layers)", a.layers) : "");
    log::info("bench", "{}: {}", source, c.summary());
    if (device < 0) {
      weights = ModelWeights::synthetic(c, a.seed);
      model = make_cpu_model(weights, cache);
    } else {
#if defined(DSV2_HAVE_CUDA)
      model = cuda::make_synthetic_model(c, device, a.seed, cache);
#else
      fail("--device {}: this dsv2 was built without the CUDA backend", a.model.device);
#endif
    }
  }
  const ModelConfig& c = model->config();
  double bw = 0;
  double wbytes = 0;
  // DSV2_CUDA_PROFILE: the per-stage GPU time of each timed phase (warm-up discarded).
  auto profile = [&](const std::string& label) {
#if defined(DSV2_HAVE_CUDA)
    if (auto* cm = cuda::as_cuda(model.get())) cm->profile_report(label);
#else
    (void)label;
#endif
  };
#if defined(DSV2_HAVE_CUDA)
  if (auto* cm = cuda::as_cuda(model.get())) {
    cm->set_graphs(!a.no_graphs);
    bw = cm->copy_bandwidth();
    wbytes = double(cm->weight_bytes());
  }
#endif
  if (device < 0) {
    bw = host_copy_bandwidth();
    wbytes = weights ? double(weights->matrix_bytes) : 0;
  }
  emit({{"bench", "env"}, {"device", model->device_name()}, {"model", source}, {"weight_bytes", wbytes},
        {"copy_GBps", bw / 1e9}, {"cache_tokens", int64_t(model->blocks().total()) * kCacheBlockSize},
        {"cache_bytes_per_token", model->cache_bytes_per_token()}, {"graphs", !a.no_graphs}});
  Runner run(*model, device, a.sync_steps);
  const int64_t V = c.vocab_size;
  const double cache_bpt = double(model->cache_bytes_per_token());

  // Decode at each batch size: prefill `prompt` tokens per sequence, then `gen` steps.
  for (int64_t B : batches) {
    Seqs seqs(*model, B, a.prompt + a.gen + a.warmup);
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t i = 0; i < B; ++i) prompts.push_back(prompt_ids(a.prompt, i, V));
    std::vector<SeqChunk> batch;
    for (int64_t i = 0; i < B; ++i) batch.push_back({&seqs.s[size_t(i)], prompts[size_t(i)], false});
    std::vector<int32_t> next;
    auto t0 = clock_type::now();
    run.step(batch, next);
    const double prefill_s = std::chrono::duration<double>(clock_type::now() - t0).count();
    std::vector<int32_t> cur = next;
    batch.clear();
    for (int64_t i = 0; i < B; ++i) batch.push_back({&seqs.s[size_t(i)], {&cur[size_t(i)], 1}, false});
    run.decode(batch, cur, a.warmup, false);  // graph capture stays out of the timing
    profile("");
    const int64_t ctx0 = seqs.s[0].length;
    t0 = clock_type::now();
    run.decode(batch, cur, a.gen, a.warmup > 0);
    const double dec_s = std::chrono::duration<double>(clock_type::now() - t0).count();
    profile(fmt::format("decode batch {}", B));
    const double step_s = dec_s / a.gen;
    const double avg_ctx = double(ctx0) + (a.gen + 1) / 2.0;
    const double bytes = decode_weight_bytes(c, B) + double(B) * avg_ctx * cache_bpt;
    const double achieved = bytes / step_s;
    emit({{"bench", "decode"}, {"batch", B}, {"prompt", a.prompt}, {"gen", a.gen},
          {"distinct_last_ids", distinct(cur)},
          {"prefill_tok_s", double(B * a.prompt) / prefill_s}, {"decode_tok_s", double(B * a.gen) / dec_s},
          {"ms_per_step", step_s * 1e3}, {"bytes_per_step", bytes}, {"achieved_GBps", achieved / 1e9},
          {"roofline_GBps", bw / 1e9}, {"pct_roofline", 100.0 * achieved / bw},
          {"roofline_tok_s", double(B) * bw / bytes}, {"overlap", run.overlap()}});
  }

  if (a.engine)
    for (int64_t B : batches)
      emit(engine_decode(*model, B, a.prompt, a.gen, a.warmup, a.engine_temperature, a.engine_top_p));

  // One long prompt: a first (cold) run of the same length on another sequence, then
  // `prefill_reps` timed runs on fresh sequences; the median is the steady-state figure.
  if (a.prefill > 0) {
    std::vector<int32_t> next;
    auto one_prefill = [&](uint64_t salt) {
      Seqs seqs(*model, 1, a.prefill + 1);
      const auto p = prompt_ids(a.prefill, int64_t(7 + salt), V);
      std::vector<SeqChunk> batch = {{&seqs.s[0], p, false}};
      auto t0 = clock_type::now();
      run.step(batch, next);
      return std::chrono::duration<double>(clock_type::now() - t0).count();
    };
    const double cold = one_prefill(100);
    profile("");
    std::vector<double> times;
    for (int r = 0; r < std::max(a.prefill_reps, 1); ++r) times.push_back(one_prefill(uint64_t(r)));
    profile(fmt::format("prefill {} tokens", a.prefill));
    std::vector<double> sorted = times;
    std::sort(sorted.begin(), sorted.end());
    const double s = sorted[sorted.size() / 2];
    emit({{"bench", "prefill"}, {"prompt", a.prefill}, {"prefill_tok_s", double(a.prefill) / s}, {"ms", s * 1e3},
          {"runs_ms", [&] {
             json j = json::array();
             for (double t : times) j.push_back(t * 1e3);
             return j;
           }()},
          {"cold_ms", cold * 1e3}, {"cold_prefill_tok_s", double(a.prefill) / cold}});
  }

  // Decode at long contexts (batch 1). Random-weight models start from a random cache of that
  // length (no prefill); a real model prefills first.
  for (int64_t ctx : contexts) {
    if (ctx + a.gen + a.warmup > c.max_position_embeddings)
      fail("--context {}: beyond the model's {} positions", ctx, c.max_position_embeddings);
    Seqs seqs(*model, 1, ctx + a.gen + a.warmup);
    std::vector<int32_t> next;
    std::vector<int32_t> cur = {1};
    double prefill_s = 0;
    if (a.synthetic.empty() || device < 0 || a.context_prefill) {
      // Chunks of 8192 tokens, as a server's chunked prefill would feed them.
      const auto ids = prompt_ids(ctx, 3, V);
      auto t0 = clock_type::now();
      for (int64_t b = 0; b < ctx; b += 8192) {
        std::vector<SeqChunk> batch = {
            {&seqs.s[0], std::span<const int32_t>(ids.data() + b, size_t(std::min<int64_t>(8192, ctx - b))), false}};
        run.step(batch, next);
      }
      prefill_s = std::chrono::duration<double>(clock_type::now() - t0).count();
      cur = next;
    } else {
      seqs.s[0].length = ctx;
    }
    std::vector<SeqChunk> batch = {{&seqs.s[0], {cur.data(), 1}, false}};
    run.decode(batch, cur, a.warmup, false);
    auto t0 = clock_type::now();
    run.decode(batch, cur, a.gen, a.warmup > 0);
    const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    const double bytes = decode_weight_bytes(c, 1) + (double(ctx) + a.gen / 2.0) * cache_bpt;
    emit({{"bench", "long_context"}, {"context", ctx}, {"gen", a.gen}, {"decode_tok_s", a.gen / s},
          {"context_prefilled", prefill_s > 0}, {"prefill_tok_s", prefill_s > 0 ? double(ctx) / prefill_s : 0.0},
          {"last_token_id", cur.empty() ? -1 : cur[0]},
          {"ms_per_step", s / a.gen * 1e3}, {"bytes_per_step", bytes}, {"achieved_GBps", bytes / (s / a.gen) / 1e9},
          {"pct_roofline", 100.0 * bytes / (s / a.gen) / bw}, {"overlap", run.overlap()}});
  }
  return 0;
}

DSV2_COMMAND("bench", "Measure prefill and decode throughput (JSON lines on stdout)", [](CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  add_model_args(app, a->model);
  app.add_option("--synthetic", a->synthetic, "Random weights of a shape: lite, v2 or a config.json path");
  app.add_option("--batch", a->batches, "Decode batch sizes, comma-separated")->capture_default_str();
  app.add_option("--prompt", a->prompt, "Prompt tokens per sequence")->capture_default_str();
  app.add_option("--gen", a->gen, "Decode steps timed")->capture_default_str();
  app.add_option("--prefill", a->prefill,
                 "Also time the prefill of one prompt of this many tokens: a cold run, then --prefill-reps runs "
                 "(median reported)");
  app.add_option("--prefill-reps", a->prefill_reps, "Timed prefill runs after the cold one")->capture_default_str();
  app.add_option("--context", a->contexts, "Also time batch-1 decode at these context lengths, comma-separated");
  app.add_flag("--context-prefill", a->context_prefill,
               "Fill the --context lengths by a real prefill in chunks of 8192 (random weights start from a random "
               "cache otherwise)");
  app.add_option("--layers", a->layers, "Override num_hidden_layers of the synthetic shape");
  app.add_option("--seed", a->seed, "Seed of the synthetic weights")->capture_default_str();
  app.add_option("--cache-tokens", a->cache_tokens, "Latent cache capacity (default: from free memory)");
  app.add_flag("--no-graphs", a->no_graphs, "Run decode steps without CUDA graphs");
  app.add_flag("--sync-steps", a->sync_steps,
               "Read each decode step's ids before queuing the next (by default a GPU step is queued with its "
               "inputs chained on the device while the host reads the previous step's ids)");
  app.add_flag("--engine", a->engine,
               "Also decode each batch size through the serving engine (greedy requests, as `dsv2 serve` runs them "
               "without HTTP): JSON lines with \"bench\": \"engine_decode\"");
  app.add_option("--engine-temperature", a->engine_temperature, "Temperature of the --engine requests (0: greedy)")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  app.add_option("--engine-top-p", a->engine_top_p, "top_p of the --engine requests")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  app.add_option("--warmup", a->warmup, "Untimed decode steps before each timed run")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  return [a] { return run_bench(*a); };
});

}  // namespace
}  // namespace dsv2::cli
