#pragma once
// Text generation for the interactive commands (generate --prompt, chat): sampling options with
// defaults from generation_config.json, streaming UTF-8-safe output with stop strings, and the
// closing speed line.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/model_args.h"
#include "sampling/sampling_params.h"
#include "tokenizer/tokenizer.h"

namespace dsv2::cli {

struct SamplingArgs {
  std::optional<int64_t> max_tokens;
  std::optional<float> temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
  std::optional<int> top_k;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool ignore_eos = false;
};

void add_sampling_args(CLI::App& app, SamplingArgs& a);
// generation_config.json defaults, overridden by whatever was given on the command line.
SamplingParams sampling_params(const SamplingArgs& a, const std::filesystem::path& model_dir);

struct TextResult {
  std::vector<int32_t> ids;
  std::string text;
  std::string finish_reason;
  double prefill_tps = 0, decode_tps = 0;
  int64_t prompt_tokens = 0;
};

// Generates from `prompt_ids`, calling `emit` with each piece of final text as it becomes known.
TextResult generate_text(Model& model, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                         const SamplingParams& params, const std::vector<int32_t>& eos_ids,
                         const std::function<void(const std::string&)>& emit);

// EOS ids: generation_config.json's (one or a list) and config.json's; the tokenizer's if neither has one.
std::vector<int32_t> eos_ids_for(const std::filesystem::path& model_dir, const ModelConfig& c, const Tokenizer* tok);

}  // namespace dsv2::cli
