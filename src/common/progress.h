#pragma once
// A one-line progress bar on stderr ("label [#####.....] 42% 1.2/2.9 GB"), redrawn in place when
// stderr is a terminal and printed once at the end otherwise.
#include <chrono>
#include <cstdint>
#include <string>

namespace dsv2 {

class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total, bool enabled = true, std::string unit = "GB");
  ~ProgressBar();
  void add(uint64_t n);
  void finish();

 private:
  void draw(bool final);
  std::string label_, unit_;
  uint64_t total_, done_ = 0;
  bool enabled_, tty_, finished_ = false;
  int last_pct_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dsv2
