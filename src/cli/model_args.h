#pragma once
// Options every model-running command shares (--model, --device, --threads) and the code that
// turns them into a loaded Model with a log line saying what was detected.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "model/model.h"
#include "model/weights.h"

namespace dsv2::cli {

struct ModelArgs {
  std::string model;          // folder or Hugging Face name; empty = the embedded default model
  std::string device = "cpu"; // cpu | cuda | cuda:N
  int threads = 0;            // 0 = all hardware threads
  bool no_progress = false;
};

void add_model_args(CLI::App& app, ModelArgs& a);

// Applies --threads and resolves --model to a folder (logging when the default is used).
std::filesystem::path prepare(const ModelArgs& a);

struct LoadedModel {
  std::filesystem::path dir;
  std::shared_ptr<ModelWeights> weights;
  std::unique_ptr<Model> model;
};
LoadedModel load_model(const ModelArgs& a, const CacheOptions& cache);

std::vector<int32_t> parse_ids(const std::string& csv);
// --device: -1 for cpu, N for cuda / cuda:N.
int parse_device(const std::string& device);

}  // namespace dsv2::cli
