#pragma once
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "model/model.h"
#include "model/weights.h"

namespace dsv2::test {

inline std::filesystem::path golden_dir(const std::string& c) { return std::filesystem::path(DSV2_TEST_DATA) / "golden" / c; }

inline nlohmann::json golden_json(const std::string& c) {
  std::ifstream in(golden_dir(c) / "golden.json");
  return nlohmann::json::parse(in);
}

inline double rel_l2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / den);
}

// Runs `ids` through a fresh sequence and returns logits for every position.
inline std::vector<float> full_logits(Model& m, const std::vector<int32_t>& ids) {
  SequenceCache seq;
  if (!reserve(m.blocks(), seq, int64_t(ids.size()))) throw std::runtime_error("cache too small");
  std::vector<float> out(ids.size() * size_t(m.config().vocab_size));
  SeqChunk ch{&seq, ids, true};
  m.forward({&ch, 1}, out.data());
  release_all(m.blocks(), seq);
  return out;
}

}  // namespace dsv2::test
