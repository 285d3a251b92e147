// `dsv2 bench` end to end on a tiny config: JSON lines with the fields the results tables use, on the
// CPU (runs everywhere, CI included) and on the GPU (skipped without one).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_model.h"

namespace {

// The dsv2 binary: DSV2 in the environment (a packed build run elsewhere), else the build tree's.
std::string dsv2_binary() {
  if (const char* env = std::getenv("DSV2")) return env;
  return DSV2_BINARY;
}

std::vector<nlohmann::json> run_bench(const std::string& args) {
  std::string data = DSV2_TEST_DATA;
  if (const char* env = std::getenv("DSV2_TEST_DATA")) data = env;
  const std::string cfg = data + "/golden/lite/model/config.json";
  const std::string cmd = dsv2_binary() + " bench --synthetic " + cfg + " " + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  std::vector<nlohmann::json> out;
  if (!p) return out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) out.push_back(nlohmann::json::parse(buf));
  EXPECT_EQ(pclose(p), 0) << cmd;
  return out;
}

void check_lines(const std::vector<nlohmann::json>& lines, size_t decode_rows) {
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0]["bench"], "env");
  EXPECT_GT(lines[0]["copy_GBps"].get<double>(), 0.0);
  size_t dec = 0, pre = 0, ctx = 0, eng = 0;
  for (auto& j : lines) {
    if (j["bench"] == "decode") {
      ++dec;
      for (const char* k : {"decode_tok_s", "prefill_tok_s", "ms_per_step", "bytes_per_step", "achieved_GBps",
                            "pct_roofline"}) {
        ASSERT_TRUE(j.contains(k)) << k;
        const double v = j[k].get<double>();
        EXPECT_TRUE(std::isfinite(v) && v > 0) << k << " = " << v;
      }
      // tokens/s and ms/step describe the same steps
      EXPECT_NEAR(j["decode_tok_s"].get<double>() * j["ms_per_step"].get<double>() / 1e3, j["batch"].get<double>(),
                  1e-6 * j["batch"].get<double>());
    } else if (j["bench"] == "prefill") {
      ++pre;
      EXPECT_GT(j["prefill_tok_s"].get<double>(), 0.0);
    } else if (j["bench"] == "long_context") {
      ++ctx;
      EXPECT_GT(j["decode_tok_s"].get<double>(), 0.0);
    } else if (j["bench"] == "engine_decode") {
      ++eng;
      EXPECT_GT(j["decode_tok_s"].get<double>(), 0.0);
      EXPECT_GT(j["steps"].get<int64_t>(), 0);
    }
  }
  EXPECT_EQ(dec, decode_rows);
  EXPECT_EQ(eng, decode_rows);  // --engine: one engine figure per batch size
  EXPECT_EQ(pre, 1u);
  EXPECT_EQ(ctx, 1u);
}

TEST(Bench, CpuSyntheticJsonLines) {
  check_lines(run_bench("--device cpu --batch 1,3 --prompt 8 --gen 4 --prefill 40 --context 100 --engine"), 2);
}

TEST(Bench, CudaSyntheticJsonLines) {
  if (!dsv2::cuda::available()) GTEST_SKIP() << "no CUDA device";
  const std::string args = "--device cuda --batch 1,3 --prompt 8 --gen 4 --prefill 40 --context 100 --cache-tokens 4096 --engine";
  const auto lines = run_bench(args);
  check_lines(lines, 2);
  // Steps queued with their inputs chained on the device decode the same tokens as steps that wait
  // (the same runs before, so that the long context gets the same cache blocks).
  const auto waited = run_bench(args + " --sync-steps");
  auto last_id = [](const std::vector<nlohmann::json>& ls, bool overlap) {
    for (auto& j : ls)
      if (j["bench"] == "long_context") {
        EXPECT_EQ(j["overlap"].get<bool>(), overlap);
        return j["last_token_id"].get<int64_t>();
      }
    return int64_t(-2);
  };
  EXPECT_EQ(last_id(lines, true), last_id(waited, false));
}

}  // namespace
