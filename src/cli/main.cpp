// dsv2: command-line entry point. Every subcommand lives in its own file (see command.h).
#include <algorithm>
#include <cstdio>
#include <exception>
#include <map>

#include "cli/command.h"
#include "common/error.h"
#include "common/log.h"

namespace dsv2::cli {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace dsv2::cli

int main(int argc, char** argv) {
  using namespace dsv2;
  CLI::App app{"dsv2: inference engine and OpenAI-compatible server for DeepSeek-V2 models", "dsv2"};
  app.set_version_flag("--version", std::string("dsv2 ") + DSV2_VERSION);
  app.require_subcommand(1);
  auto& cmds = cli::registry();
  std::sort(cmds.begin(), cmds.end(), [](const cli::Command& a, const cli::Command& b) { return a.name < b.name; });
  std::map<CLI::App*, std::function<int()>> runners;
  for (auto& c : cmds) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    runners[sub] = c.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
  } catch (const Error& e) {
    std::fprintf(stderr, "dsv2: error: %s\n", e.what());
    return e.kind() == "internal" ? 3 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv2: error: %s\n", e.what());
    return 3;
  }
  return 1;
}
