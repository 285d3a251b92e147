#include "common/progress.h"

#include <cstdio>

#include <unistd.h>

namespace dsv2 {

ProgressBar::ProgressBar(std::string label, uint64_t total, bool enabled, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled),
      tty_(isatty(STDERR_FILENO)), start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::add(uint64_t n) {
  done_ += n;
  draw(false);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  done_ = total_;
  draw(true);
}

void ProgressBar::draw(bool final) {
  if (!enabled_) return;
  int pct = total_ ? int(100.0 * double(done_) / double(total_)) : 100;
  if (!final && (!tty_ || pct == last_pct_)) return;
  last_pct_ = pct;
  const int width = 30;
  int fill = pct * width / 100;
  std::string bar(size_t(fill), '#');
  bar.append(size_t(width - fill), '.');
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  // Byte counts are shown in GB or MB, whichever reads better; other units as plain counts.
  std::string unit = unit_;
  double scale = 1.0;
  if (unit_ == "GB") {
    if (total_ >= 1000000000ull) {
      scale = 1e9;
    } else {
      scale = 1e6;
      unit = "MB";
    }
  }
  std::fprintf(stderr, "%s[dsv2 load] %s [%s] %3d%% %.2f/%.2f %s %.1fs%s", tty_ ? "\r" : "", label_.c_str(),
               bar.c_str(), pct, double(done_) / scale, double(total_) / scale, unit.c_str(), secs,
               final ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace dsv2
