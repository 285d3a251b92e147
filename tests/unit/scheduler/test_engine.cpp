// The engine on the golden V2 checkpoint (no tokenizer: driven with ids). Batching, chunked prefill,
// prefix caching and preemption must not change any request's greedy output.
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "common/error.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "runtime/generate.h"

namespace dsv2 {
namespace {

std::filesystem::path golden_model() { return std::filesystem::path(DSV2_TEST_DATA) / "golden/v2/model"; }

std::shared_ptr<ModelWeights> weights() {
  static std::shared_ptr<ModelWeights> w = ModelWeights::load(golden_model(), false);
  return w;
}

struct Result {
  std::vector<int32_t> ids;
  std::string finish;
  std::string error;
};

// Drives the engine on this thread until every channel has finished.
std::vector<Result> run_all(Engine& e, const std::vector<std::shared_ptr<ResultChannel>>& chans, int max_steps = 100000) {
  std::vector<Result> res(chans.size());
  std::vector<bool> done(chans.size(), false);
  size_t n_done = 0;
  for (int step = 0; step < max_steps && n_done < chans.size(); ++step) {
    e.step();
    for (size_t i = 0; i < chans.size(); ++i) {
      std::vector<EngineEvent> evs;
      chans[i]->pop_all(evs, std::chrono::milliseconds(0));
      for (auto& ev : evs) {
        if (ev.kind == EngineEvent::Kind::token) res[i].ids.push_back(ev.token.id);
        if (ev.kind == EngineEvent::Kind::finish) res[i].finish = ev.finish_reason;
        if (ev.kind == EngineEvent::Kind::error) res[i].error = ev.error;
        if (ev.kind != EngineEvent::Kind::token && !done[i]) {
          done[i] = true;
          ++n_done;
        }
      }
    }
  }
  return res;
}

EngineRequest greedy(std::vector<int32_t> prompt, int64_t max_tokens) {
  EngineRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  return r;
}

std::vector<int32_t> reference(Model& m, const std::vector<int32_t>& prompt, int64_t n) {
  GenerateOptions go;
  go.max_tokens = n;
  go.ignore_eos = true;
  auto pick = [](std::span<const float> l, std::span<const int32_t>) { return argmax(l); };
  return generate(m, prompt, go, pick).ids;
}

std::vector<std::vector<int32_t>> prompts(int n, uint32_t seed, int min_len, int max_len) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < n; ++i) {
    int len = min_len + int(rng() % uint32_t(max_len - min_len + 1));
    std::vector<int32_t> p;
    for (int j = 0; j < len; ++j) p.push_back(int32_t(2 + rng() % 250));
    out.push_back(p);
  }
  return out;
}

// 33 requests at once (one among 32 others), chunked prefill with a small budget, versus each alone
// through the single-sequence reference loop.
TEST(Engine, BatchedGreedyEqualsAlone) {
  CacheOptions co;
  co.max_tokens = 64 * 200;
  auto model = make_cpu_model(weights(), co);
  const int64_t N = 24;
  auto ps = prompts(33, 7, 1, 150);
  std::vector<std::vector<int32_t>> ref;
  for (auto& p : ps) ref.push_back(reference(*model, p, N));
  ASSERT_EQ(model->blocks().used_count(), 0);

  EngineOptions eo;
  eo.scheduler.max_running = 64;
  eo.scheduler.max_batch_tokens = 96;  // forces prompts to be prefilled in chunks across steps
  Engine e(*model, eo);
  std::vector<std::shared_ptr<ResultChannel>> chans;
  for (auto& p : ps) {
    chans.push_back(std::make_shared<ResultChannel>());
    std::vector<EngineRequest> r;
    r.push_back(greedy(p, N));
    e.submit(std::move(r), chans.back());
  }
  auto res = run_all(e, chans);
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(res[i].error, "");
    EXPECT_EQ(res[i].finish, "length") << i;
    EXPECT_EQ(res[i].ids, ref[i]) << "request " << i << " (prompt of " << ps[i].size() << " tokens)";
  }
  EngineStats s = e.stats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_GT(s.steps, N);                       // requests really ran side by side:
  EXPECT_LT(s.steps, int64_t(ps.size()) * N);  // far fewer steps than one request at a time
}

// Requests that share a long prompt prefix reuse its full blocks and still produce the same output.
TEST(Engine, PrefixCacheReusesFullBlocksWithoutChangingResults) {
  CacheOptions co;
  co.max_tokens = 64 * 40;
  auto model = make_cpu_model(weights(), co);
  auto base = prompts(1, 11, 200, 200)[0];
  std::vector<std::vector<int32_t>> ps;
  for (int i = 0; i < 4; ++i) {
    auto p = base;
    p.push_back(int32_t(10 + i));
    ps.push_back(p);
  }
  std::vector<std::vector<int32_t>> ref;
  for (auto& p : ps) ref.push_back(reference(*model, p, 8));

  Engine e(*model, EngineOptions{});
  // The first request fills the cache; the others, submitted after it finished, hit 3 full blocks.
  auto c0 = std::make_shared<ResultChannel>();
  e.submit({greedy(ps[0], 8)}, c0);
  auto r0 = run_all(e, {c0});
  EXPECT_EQ(r0[0].ids, ref[0]);
  EngineStats s0 = e.stats();
  EXPECT_EQ(s0.prefix_hit_tokens, 0);
  EXPECT_EQ(s0.blocks_used, 0);
  EXPECT_EQ(s0.blocks_cached, 3);  // 208 tokens computed: 3 full blocks registered

  std::vector<std::shared_ptr<ResultChannel>> chans;
  for (int i = 1; i < 4; ++i) {
    chans.push_back(std::make_shared<ResultChannel>());
    e.submit({greedy(ps[size_t(i)], 8)}, chans.back());
  }
  auto res = run_all(e, chans);
  for (int i = 1; i < 4; ++i) EXPECT_EQ(res[size_t(i - 1)].ids, ref[size_t(i)]) << i;
  EngineStats s = e.stats();
  EXPECT_EQ(s.prefix_hit_tokens, 3 * 192);
  EXPECT_EQ(s.prompt_tokens, 4 * 201);
  EXPECT_EQ(s.blocks_used, 0);
}

// The whole prompt cached: the last token is still computed (its logits are needed).
TEST(Engine, FullyCachedPromptStillComputesItsLastToken) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  auto p = prompts(1, 5, 128, 128)[0];
  auto ref = reference(*model, p, 4);
  Engine e(*model, EngineOptions{});
  for (int rep = 0; rep < 2; ++rep) {
    auto c = std::make_shared<ResultChannel>();
    e.submit({greedy(p, 4)}, c);
    EXPECT_EQ(run_all(e, {c})[0].ids, ref) << rep;
  }
  EXPECT_EQ(e.stats().prefix_hit_tokens, 64);  // one block: the second block holds the last token
}

// A cache far too small for everybody: requests wait or are preempted and recomputed, and every
// output is still exact; nothing is left allocated.
TEST(Engine, PreemptionUnderCachePressureKeepsResults) {
  CacheOptions co;
  co.max_tokens = 64 * 6;
  auto model = make_cpu_model(weights(), co);
  auto ps = prompts(12, 3, 40, 100);
  const int64_t N = 60;  // every request crosses at least one block boundary while decoding
  std::vector<std::vector<int32_t>> ref;
  for (auto& p : ps) ref.push_back(reference(*model, p, N));
  EngineOptions eo;
  eo.scheduler.prefix_caching = false;
  Engine e(*model, eo);
  std::vector<std::shared_ptr<ResultChannel>> chans;
  for (auto& p : ps) {
    chans.push_back(std::make_shared<ResultChannel>());
    e.submit({greedy(p, N)}, chans.back());
  }
  auto res = run_all(e, chans);
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(res[i].ids, ref[i]) << i;
  EngineStats s = e.stats();
  EXPECT_GT(s.preemptions, 0);
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.blocks_free, 6);
}

// Same pressure with prefix caching on: preempted requests find their own blocks again.
TEST(Engine, PreemptionWithPrefixCachingKeepsResults) {
  CacheOptions co;
  co.max_tokens = 64 * 8;
  auto model = make_cpu_model(weights(), co);
  auto ps = prompts(10, 9, 60, 130);
  std::vector<std::vector<int32_t>> ref;
  for (auto& p : ps) ref.push_back(reference(*model, p, 50));
  Engine e(*model, EngineOptions{});
  std::vector<std::shared_ptr<ResultChannel>> chans;
  for (auto& p : ps) {
    chans.push_back(std::make_shared<ResultChannel>());
    e.submit({greedy(p, 50)}, chans.back());
  }
  auto res = run_all(e, chans);
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(res[i].ids, ref[i]) << i;
  EXPECT_GT(e.stats().preemptions, 0);
  EXPECT_EQ(e.stats().blocks_used, 0);
}

// Seeded sampling is reproducible, also when the request runs in a batch; n choices share a channel.
TEST(Engine, SeededSamplingIsReproducibleAcrossBatching) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  Engine e(*model, EngineOptions{});
  auto p = prompts(1, 21, 30, 30)[0];
  auto sampled = [&](uint64_t seed) {
    EngineRequest r = greedy(p, 20);
    r.sampling.temperature = 1.5;
    r.sampling.top_p = 0.95;
    r.sampling.seed = seed;
    r.sampling.has_seed = true;
    return r;
  };
  auto c1 = std::make_shared<ResultChannel>();
  e.submit({sampled(42)}, c1);
  auto alone = run_all(e, {c1})[0].ids;
  // Among others, as choice 1 of a request with n = 3.
  auto c2 = std::make_shared<ResultChannel>();
  std::vector<EngineRequest> rs = {sampled(1), sampled(42), sampled(2)};
  for (int i = 0; i < 3; ++i) rs[size_t(i)].choice = i;
  e.submit(std::move(rs), c2);
  std::vector<std::vector<int32_t>> by_choice(3);
  int finished = 0;
  for (int step = 0; step < 1000 && finished < 3; ++step) {
    e.step();
    std::vector<EngineEvent> evs;
    c2->pop_all(evs, std::chrono::milliseconds(0));
    for (auto& ev : evs) {
      if (ev.kind == EngineEvent::Kind::token) by_choice[size_t(ev.choice)].push_back(ev.token.id);
      else ++finished;
    }
  }
  EXPECT_EQ(finished, 3);
  EXPECT_EQ(by_choice[1], alone);
  EXPECT_NE(by_choice[0], alone);
  EXPECT_NE(by_choice[0], by_choice[2]);
}

// Greedy rows without logprobs come from Model::forward_select's argmax, the others from whole rows:
// a batch mixing them (and a penalized greedy request) gives every request what it gets alone.
TEST(Engine, ArgmaxOnlyRowsMixWithSampledRows) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  const auto ps = prompts(4, 33, 8, 20);
  auto req = [&](size_t i) {
    EngineRequest r = greedy(ps[i], 12);
    if (i == 1) r.sampling.logprobs = true;
    if (i == 2) r.sampling.repetition_penalty = 1.3f;
    if (i == 3) {
      r.sampling.temperature = 0.9f;
      r.sampling.seed = 5;
      r.sampling.has_seed = true;
    }
    return r;
  };
  EXPECT_TRUE(Sampler(req(0).sampling, 100).argmax_only());
  for (size_t i = 1; i < 4; ++i) EXPECT_FALSE(Sampler(req(i).sampling, 100).argmax_only()) << i;
  Engine e(*model, EngineOptions{});
  std::vector<std::shared_ptr<ResultChannel>> together;
  for (size_t i = 0; i < 4; ++i) {
    together.push_back(std::make_shared<ResultChannel>());
    e.submit({req(i)}, together.back());
  }
  const auto mixed = run_all(e, together);
  for (size_t i = 0; i < 4; ++i) {
    auto c = std::make_shared<ResultChannel>();
    e.submit({req(i)}, c);
    const auto alone = run_all(e, {c})[0];
    EXPECT_EQ(mixed[i].ids, alone.ids) << "request " << i;
    EXPECT_EQ(mixed[i].finish, "length");
  }
  EXPECT_EQ(mixed[0].ids, reference(*model, ps[0], 12));
}

// generate() with a Sampler (the backend picks greedy rows itself) gives what the pick-callback form
// gives with the same sampler settings: greedy, seeded sampling, and a penalty (host rows).
TEST(Generate, SamplerFormEqualsPickForm) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  const auto p = prompts(1, 77, 300, 300)[0];
  GenerateOptions go;
  go.max_tokens = 10;
  go.ignore_eos = true;
  go.prefill_chunk = 128;  // three prompt chunks
  for (int mode = 0; mode < 3; ++mode) {
    SamplingParams sp;
    sp.temperature = mode == 0 ? 0.f : 0.9f;
    sp.top_p = 0.9f;
    sp.seed = 3;
    sp.has_seed = true;
    if (mode == 2) sp.repetition_penalty = 1.2f;
    Sampler a(sp, 250), b(sp, 250);
    auto pick = [&](std::span<const float> l, std::span<const int32_t> gen) { return b.sample(l, p, gen).id; };
    const auto want = generate(*model, p, go, pick).ids;
    EXPECT_EQ(generate(*model, p, go, a).ids, want) << "mode " << mode;
    if (mode == 0) {
      EXPECT_EQ(want, reference(*model, p, 10));
    }
  }
}

// Stop ids end a request with "stop" after emitting the id; logprobs are the raw log-softmax.
TEST(Engine, StopIdsAndLogprobs) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  auto p = prompts(1, 4, 10, 10)[0];
  auto ref = reference(*model, p, 10);
  Engine e(*model, EngineOptions{});
  EngineRequest r = greedy(p, 10);
  r.stop_ids = {ref[3]};
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 3;
  auto c = std::make_shared<ResultChannel>();
  e.submit({r}, c);
  std::vector<EngineEvent> evs;
  for (int i = 0; i < 100; ++i) {
    e.step();
    c->pop_all(evs, std::chrono::milliseconds(0));
    if (!evs.empty() && evs.back().kind != EngineEvent::Kind::token) break;
  }
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs.back().kind, EngineEvent::Kind::finish);
  EXPECT_EQ(evs.back().finish_reason, "stop");
  // The stop id may occur earlier than position 3 in the greedy output.
  size_t first = size_t(std::find(ref.begin(), ref.end(), ref[3]) - ref.begin());
  ASSERT_EQ(evs.size(), first + 2);
  for (size_t i = 0; i + 1 < evs.size(); ++i) {
    const SampleResult& t = evs[i].token;
    EXPECT_EQ(t.id, ref[i]);
    ASSERT_EQ(t.top.size(), 3u);
    EXPECT_EQ(t.top[0].id, t.id);  // greedy picks the most likely token
    EXPECT_FLOAT_EQ(t.top[0].logprob, t.logprob);
    EXPECT_LE(t.logprob, 0.0f);
    EXPECT_GE(t.top[0].logprob, t.top[1].logprob);
    EXPECT_GE(t.top[1].logprob, t.top[2].logprob);
  }
}

// A cancelled request gives its blocks back at the very next step.
TEST(Engine, CancellationFreesBlocksWithinOneStep) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  Engine e(*model, EngineOptions{});
  auto c = std::make_shared<ResultChannel>();
  e.submit({greedy(prompts(1, 8, 300, 300)[0], 150)}, c);
  for (int i = 0; i < 5; ++i) e.step();
  std::vector<EngineEvent> evs;
  c->pop_all(evs, std::chrono::milliseconds(0));
  EXPECT_EQ(evs.size(), 5u);
  EXPECT_EQ(e.stats().blocks_used, 5);  // 305 positions
  EXPECT_EQ(e.stats().running, 1);
  e.cancel(*c);
  e.step();
  EXPECT_EQ(e.stats().running, 0);
  EXPECT_EQ(e.stats().blocks_used, 0);
  evs.clear();
  EXPECT_FALSE(c->pop_all(evs, std::chrono::milliseconds(0)));  // nothing more is sent
}

// With the engine thread: a cancel wakes it, the request stops early, nothing stays allocated.
TEST(Engine, CancellationOnTheEngineThread) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  Engine e(*model, EngineOptions{});
  e.start();
  auto c = std::make_shared<ResultChannel>();
  e.submit({greedy(prompts(1, 8, 300, 300)[0], 200)}, c);
  std::vector<EngineEvent> evs;
  auto t0 = std::chrono::steady_clock::now();
  while (evs.empty() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30))
    c->pop_all(evs, std::chrono::milliseconds(50));
  ASSERT_FALSE(evs.empty());
  e.cancel(*c);
  EngineStats s;
  for (int i = 0; i < 300; ++i) {
    s = e.stats();
    if (s.running == 0 && s.blocks_used == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.blocks_used, 0);
  e.stop();
}

// Cancelling one choice (a stop string found by the HTTP side) stops only that choice.
TEST(Engine, CancellingOneChoiceLeavesTheOthers) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  Engine e(*model, EngineOptions{});
  auto p = prompts(1, 13, 70, 70)[0];
  auto ref = reference(*model, p, 30);
  std::vector<EngineRequest> rs = {greedy(p, 30), greedy(p, 30)};
  rs[1].choice = 1;
  auto c = std::make_shared<ResultChannel>();
  e.submit(std::move(rs), c);
  std::vector<std::vector<int32_t>> got(2);
  std::vector<std::string> fin(2);
  for (int step = 0; step < 200 && fin[1].empty(); ++step) {
    e.step();
    std::vector<EngineEvent> evs;
    c->pop_all(evs, std::chrono::milliseconds(0));
    for (auto& ev : evs) {
      if (ev.kind == EngineEvent::Kind::token) got[size_t(ev.choice)].push_back(ev.token.id);
      if (ev.kind == EngineEvent::Kind::finish) fin[size_t(ev.choice)] = ev.finish_reason;
    }
    if (got[0].size() == 3) e.cancel(*c, 0);
  }
  EXPECT_EQ(got[0], std::vector<int32_t>(ref.begin(), ref.begin() + 3));
  EXPECT_EQ(fin[0], "");
  EXPECT_EQ(got[1], ref);
  EXPECT_EQ(fin[1], "length");
  EXPECT_EQ(e.stats().blocks_used, 0);
  EXPECT_EQ(e.stats().running, 0);
}

// Overlapped decoding (each decode step queued, chained on the device ids of the step before, before
// that step's ids are read) on a model that runs passes at once: every request gets the same events as
// without overlap, with arrivals between steps, chunked prefill, a stop id, one-token requests,
// logprobs (rows that need logits, never overlapped), a cancelled request and a cache small enough to
// preempt; and nothing stays allocated.
TEST(Engine, OverlappedDecodingGivesTheSameEvents) {
  struct Out {
    std::vector<std::vector<int32_t>> ids;
    std::vector<std::string> finish;
    std::vector<size_t> events;
    EngineStats stats;
  };
  auto ps = prompts(9, 17, 5, 120);
  CacheOptions co;
  co.max_tokens = 64 * 5;
  auto model = make_cpu_model(weights(), co);
  const auto stop_ref = reference(*model, ps[2], 12);
  auto run = [&](int overlap) {
    EngineOptions eo;
    eo.overlap = overlap;
    eo.scheduler.max_batch_tokens = 64;
    Engine e(*model, eo);
    std::vector<EngineRequest> reqs;
    for (size_t i = 0; i < ps.size(); ++i) reqs.push_back(greedy(ps[i], int64_t(1 + (i * 7) % 40)));
    reqs[2].max_tokens = 12;
    reqs[2].stop_ids = {stop_ref[6]};
    reqs[4].sampling.logprobs = true;
    reqs[5].max_tokens = 1;
    reqs[6].max_tokens = 100;  // 6 and 8 grow to more blocks than the cache holds: preemption
    reqs[7].max_tokens = 50;
    reqs[8].max_tokens = 100;
    Out o;
    o.ids.resize(ps.size());
    o.finish.resize(ps.size());
    o.events.resize(ps.size());
    std::vector<std::shared_ptr<ResultChannel>> chans(ps.size());
    for (auto& c : chans) c = std::make_shared<ResultChannel>();
    const std::vector<int> arrive = {0, 0, 0, 3, 3, 9, 15, 15, 40};
    for (int step = 0; step < 2000; ++step) {
      for (size_t i = 0; i < ps.size(); ++i)
        if (arrive[i] == step) e.submit({reqs[i]}, chans[i]);
      if (o.ids[7].size() == 20) e.cancel(*chans[7]);
      const bool ran = e.step();
      for (size_t i = 0; i < ps.size(); ++i) {
        std::vector<EngineEvent> evs;
        chans[i]->pop_all(evs, std::chrono::milliseconds(0));
        o.events[i] += evs.size();
        for (auto& ev : evs) {
          if (ev.kind == EngineEvent::Kind::token) o.ids[i].push_back(ev.token.id);
          if (ev.kind == EngineEvent::Kind::finish) o.finish[i] = ev.finish_reason;
          EXPECT_NE(ev.kind, EngineEvent::Kind::error) << ev.error;
        }
      }
      if (!ran && step > 40) break;
    }
    o.stats = e.stats();
    return o;
  };
  const Out plain = run(0), over = run(1);
  EXPECT_EQ(plain.stats.chained_steps, 0);
  EXPECT_GT(over.stats.chained_steps, 10);
  EXPECT_GT(over.stats.preemptions, 0);
  EXPECT_GT(plain.stats.preemptions, 0);
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(over.ids[i], plain.ids[i]) << "request " << i;
    EXPECT_EQ(over.finish[i], plain.finish[i]) << "request " << i;
    EXPECT_EQ(over.events[i], plain.events[i]) << "request " << i;
  }
  EXPECT_EQ(plain.finish[2], "stop");
  EXPECT_EQ(plain.finish[7], "");  // cancelled after 20 tokens
  EXPECT_EQ(plain.ids[7].size(), 20u);
  EXPECT_EQ(plain.ids[0], reference(*model, ps[0], 1));
  EXPECT_EQ(plain.ids[6], reference(*model, ps[6], 100));
  for (const Out* o : {&plain, &over}) {
    EXPECT_EQ(o->stats.blocks_used, 0);
    EXPECT_EQ(o->stats.running, 0);
    EXPECT_EQ(o->stats.waiting, 0);
  }
}

// The engine thread with overlapped decoding: requests arriving while others decode, a long one
// cancelled mid-stream (its tokens so far are its reference's first ones); every other request gets its
// reference continuation and nothing stays allocated.
TEST(Engine, OverlappedDecodingOnTheEngineThread) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  auto ps = prompts(6, 29, 10, 90);
  std::vector<std::vector<int32_t>> ref;
  for (auto& p : ps) ref.push_back(reference(*model, p, 40));
  const int64_t long_n = 512 - int64_t(ps[1].size());
  const auto ref_long = reference(*model, ps[1], long_n);
  EngineOptions eo;
  eo.overlap = 1;
  Engine e(*model, eo);
  e.start();
  std::vector<std::shared_ptr<ResultChannel>> chans(ps.size());
  std::vector<std::vector<int32_t>> got(ps.size());
  std::vector<std::string> fin(ps.size());
  auto pump = [&](std::chrono::milliseconds wait) {
    for (size_t i = 0; i < chans.size(); ++i) {
      if (!chans[i]) continue;
      std::vector<EngineEvent> evs;
      chans[i]->pop_all(evs, wait);
      for (auto& ev : evs) {
        ASSERT_NE(ev.kind, EngineEvent::Kind::error) << ev.error;
        if (ev.kind == EngineEvent::Kind::token) got[i].push_back(ev.token.id);
        if (ev.kind == EngineEvent::Kind::finish) fin[i] = ev.finish_reason;
      }
    }
  };
  for (size_t i = 0; i < 3; ++i) {
    chans[i] = std::make_shared<ResultChannel>();
    e.submit({greedy(ps[i], i == 1 ? long_n : 40)}, chans[i]);
  }
  const auto t0 = std::chrono::steady_clock::now();
  bool cancelled = false, second_wave = false;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
    pump(std::chrono::milliseconds(5));
    if (!second_wave && got[0].size() >= 5) {  // arrivals while the first ones decode
      for (size_t i = 3; i < ps.size(); ++i) {
        chans[i] = std::make_shared<ResultChannel>();
        e.submit({greedy(ps[i], 40)}, chans[i]);
      }
      second_wave = true;
    }
    if (!cancelled && got[1].size() >= 10) {
      e.cancel(*chans[1]);
      cancelled = true;
    }
    bool all = second_wave;
    for (size_t i = 0; i < ps.size(); ++i) all = all && (i == 1 || !fin[i].empty());
    if (all) break;
  }
  for (int i = 0; i < 300; ++i) {  // the cancelled request's blocks come back
    if (e.stats().running == 0 && e.stats().blocks_used == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  e.stop();
  for (size_t i = 0; i < ps.size(); ++i) {
    if (i == 1) continue;
    EXPECT_EQ(fin[i], "length") << i;
    EXPECT_EQ(got[i], ref[i]) << i;
  }
  EXPECT_TRUE(cancelled);
  ASSERT_GE(got[1].size(), 10u);
  ASSERT_LE(got[1].size(), ref_long.size());
  EXPECT_EQ(got[1], std::vector<int32_t>(ref_long.begin(), ref_long.begin() + long(got[1].size())));
  if (fin[1].empty()) {
    EXPECT_LT(got[1].size(), ref_long.size());  // stopped by the cancellation
  }
  EXPECT_GT(e.stats().chained_steps, 0);
  EXPECT_EQ(e.stats().running, 0);
  EXPECT_EQ(e.stats().blocks_used, 0);
}

// Model::queue_select's default (a pass run at once): a chained pass reads the previous pass's ids as its
// inputs (the same ids as the tokens given directly), and is refused after a pass that did not choose
// one id per chunk, or with a row asking for logits.
TEST(Model, QueueSelectChainsOnThePreviousIds) {
  auto model = make_cpu_model(weights(), CacheOptions{});
  auto p = prompts(1, 31, 20, 20)[0];
  const auto ref = reference(*model, p, 3);
  BlockAllocator& a = model->blocks();
  SequenceCache c;
  ASSERT_TRUE(reserve(a, c, int64_t(p.size()) + 3));
  std::vector<RowUse> greedy_use = {RowUse::greedy};
  std::vector<int32_t> ids(1, -1);
  SeqChunk prompt{&c, p, false};
  model->queue_select({&prompt, 1}, greedy_use.data(), nullptr, 0, ids.data(), false);
  EXPECT_FALSE(model->wait_selected());  // nothing pending: it ran at once
  EXPECT_EQ(ids[0], ref[0]);
  const int32_t ignored = 0;  // a chained chunk's own token is not read
  SeqChunk next{&c, std::span<const int32_t>(&ignored, 1), false};
  for (int k = 1; k < 3; ++k) {
    model->queue_select({&next, 1}, greedy_use.data(), nullptr, 0, ids.data(), true);
    EXPECT_EQ(ids[0], ref[size_t(k)]) << "token " << k;
  }
  std::vector<RowUse> none_use = {RowUse::none};
  model->queue_select({&next, 1}, none_use.data(), nullptr, 0, ids.data(), false);
  try {
    model->queue_select({&next, 1}, greedy_use.data(), nullptr, 0, ids.data(), true);
    ADD_FAILURE() << "a chained pass after a pass without ids ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chained pass"), std::string::npos) << e.what();
  }
  std::vector<RowUse> logits_use = {RowUse::logits};
  EXPECT_THROW(model->queue_select({&next, 1}, logits_use.data(), nullptr, 0, ids.data(), false), Error);
  release_all(a, c);
}

TEST(Engine, RefusesRequestsThatCannotRun) {
  CacheOptions co;
  co.max_tokens = 64 * 2;
  auto model = make_cpu_model(weights(), co);
  EngineOptions eo;
  eo.max_queue = 2;
  Engine e(*model, eo);
  auto c = std::make_shared<ResultChannel>();
  auto kind = [&](EngineRequest r) {
    try {
      e.submit({r}, c);
    } catch (const Error& err) {
      return err.kind();
    }
    return std::string("accepted");
  };
  EXPECT_EQ(kind(greedy({}, 4)), "invalid_request");
  EXPECT_EQ(kind(greedy({5, 999}, 4)), "invalid_request");
  EXPECT_EQ(kind(greedy({5}, 0)), "invalid_request");
  EXPECT_EQ(kind(greedy(std::vector<int32_t>(100, 3), 100)), "context_length_exceeded");  // cache: 128
  EXPECT_EQ(kind(greedy({5}, 600)), "context_length_exceeded");  // context 512
  EXPECT_EQ(kind(greedy({5}, 4)), "accepted");
  EXPECT_EQ(kind(greedy({5}, 4)), "accepted");
  EXPECT_EQ(kind(greedy({5}, 4)), "overloaded");
}

}  // namespace
}  // namespace dsv2
