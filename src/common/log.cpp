#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace dsv2::log {

namespace {
std::atomic<Level> g_level{Level::info};
std::mutex g_mu;
}  // namespace

void set_level(Level l) { g_level = l; }
Level level() { return g_level; }

void write(Level l, std::string_view component, std::string_view msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::lock_guard<std::mutex> lock(g_mu);
  if (l == Level::info)
    std::fprintf(stderr, "[dsv2 %.*s] %.*s\n", (int)component.size(), component.data(), (int)msg.size(), msg.data());
  else
    std::fprintf(stderr, "[dsv2 %.*s] %s: %.*s\n", (int)component.size(), component.data(), names[(int)l],
                 (int)msg.size(), msg.data());
}

}  // namespace dsv2::log
