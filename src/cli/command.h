#pragma once
// Subcommand registry: each src/cli/<name>.cpp defines its options and its run function and
// registers itself with DSV2_COMMAND, so main.cpp never changes when a command is added.
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace dsv2::cli {

struct Command {
  std::string name;
  std::string help;
  // Adds options to `sub` and returns the function that runs the command (exit code).
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Command>& registry();

struct Registrar {
  explicit Registrar(Command c) { registry().push_back(std::move(c)); }
};

}  // namespace dsv2::cli

#define DSV2_CONCAT_INNER(a, b) a##b
#define DSV2_CONCAT(a, b) DSV2_CONCAT_INNER(a, b)
#define DSV2_COMMAND(name, help, setup_fn) \
  static ::dsv2::cli::Registrar DSV2_CONCAT(dsv2_cmd_, __LINE__)({name, help, setup_fn})
