#pragma once
// Component-prefixed logging to stderr: "[dsv2 load] ..." so that stdout stays clean for
// JSON and generated text.
#include <string_view>

#include <fmt/format.h>

namespace dsv2::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3, quiet = 4 };
void set_level(Level l);
Level level();
void write(Level l, std::string_view component, std::string_view msg);

template <typename... Args>
void info(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::info) write(Level::info, component, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::warn) write(Level::warn, component, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void debug(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::debug) write(Level::debug, component, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::error) write(Level::error, component, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace dsv2::log
