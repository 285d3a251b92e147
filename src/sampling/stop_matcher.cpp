#include "sampling/stop_matcher.h"

#include <algorithm>

#include "common/error.h"

namespace dsv2 {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const auto& s : stops_) {
    if (s.empty()) fail("stop strings must not be empty");
  }
}

StopMatcher::Result StopMatcher::push(const std::string& piece) {
  Result r;
  if (stopped_) {
    r.stopped = true;
    return r;
  }
  pending_ += piece;
  // Earliest full match; on equal positions the longer stop string wins.
  size_t best = std::string::npos;
  const std::string* which = nullptr;
  for (const auto& s : stops_) {
    size_t f = pending_.find(s);
    if (f != std::string::npos && (f < best || (f == best && s.size() > which->size()))) {
      best = f;
      which = &s;
    }
  }
  if (which) {
    r.emit = pending_.substr(0, best);
    r.stopped = true;
    r.matched = *which;
    stopped_ = true;
    pending_.clear();
    return r;
  }
  // Hold back the longest suffix of pending_ that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  r.emit = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return r;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(pending_);
  return out;
}

}  // namespace dsv2
