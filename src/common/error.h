#pragma once
// One error family, two severities (see docs/ARCHITECTURE.md):
//  - dsv2::Error: bad input from the user or a client (a file, a config value, a request).
//    It carries a message naming the problem; the CLI prints it and exits non-zero, the
//    server turns it into an OpenAI error object with a 4xx status.
//  - DSV2_CHECK failures: broken invariants inside the engine (also thrown, never abort()).
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace dsv2 {

class Error : public std::runtime_error {
 public:
  // kind: a short machine-readable category ("invalid_request", "not_found", "internal", ...)
  explicit Error(std::string msg, std::string kind = "invalid_input")
      : std::runtime_error(std::move(msg)), kind_(std::move(kind)) {}
  const std::string& kind() const { return kind_; }

 private:
  std::string kind_;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

[[noreturn]] inline void check_failed(const char* file, int line, const char* expr, const std::string& msg) {
  throw Error(fmt::format("internal check failed at {}:{}: {}{}{}", file, line, expr, msg.empty() ? "" : ": ", msg),
              "internal");
}

}  // namespace dsv2

#define DSV2_CHECK(cond, ...)                                                                   \
  do {                                                                                        \
    if (!(cond)) ::dsv2::check_failed(__FILE__, __LINE__, #cond, ::fmt::format("" __VA_ARGS__)); \
  } while (0)
