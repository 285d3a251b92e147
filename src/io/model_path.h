#pragma once
// Where a model lives: `arg` is a folder, or a Hugging Face name ("deepseek-ai/DeepSeek-V2-Lite-Chat")
// looked up in the local Hugging Face cache: $HF_HUB_CACHE, else $HF_HOME/hub, else
// ~/.cache/huggingface/hub, laid out as models--org--name/refs/main (a commit hash) ->
// models--org--name/snapshots/<hash>/. Nothing is downloaded.
#include <filesystem>
#include <string>

namespace dsv2 {

// Throws dsv2::Error naming every place it looked when the model is not found.
std::filesystem::path resolve_model_path(const std::string& arg);

// The cache folder the lookup uses, from the environment as described above.
std::filesystem::path hf_hub_cache_dir();

}  // namespace dsv2
