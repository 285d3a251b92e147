#pragma once
// Rotary position embedding as DeepSeek-V2 defines it (reference section 3): adjacent pairs
// (x[2i], x[2i+1]) rotate with inv_freq[i]; the result is written de-interleaved
// (out[i], out[i + d/2]) exactly as the original code does. YaRN changes inv_freq and scales
// cos/sin by the attention factor. Shared by every backend: the tables come from here.
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace dsv2 {

// inv_freq[i], i in [0, rope_dim/2), computed in double.
std::vector<double> rope_inv_freq(const ModelConfig& c);

class RopeTable {
 public:
  explicit RopeTable(const ModelConfig& c);
  int64_t half() const { return half_; }
  // cos/sin (already scaled by the attention factor) for one position, each [rope_dim/2].
  void at(int64_t pos, float* cos_out, float* sin_out) const;
  // In place on x[rope_dim] at position pos: interleaved pairs in, de-interleaved out.
  void apply(float* x, int64_t pos) const;

 private:
  int64_t half_;
  std::vector<double> inv_freq_;
  double attention_factor_;
};

}  // namespace dsv2
