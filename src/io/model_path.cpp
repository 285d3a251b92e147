#include "io/model_path.h"

#include <cstdlib>
#include <fstream>

#include "common/error.h"

namespace dsv2 {

namespace fs = std::filesystem;

namespace {
std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

bool looks_like_repo_id(const std::string& s) {
  size_t slash = s.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == s.size()) return false;
  if (s.find('/', slash + 1) != std::string::npos) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  return s.find("..") == std::string::npos;
}
}  // namespace

fs::path hf_hub_cache_dir() {
  std::string v = env("HF_HUB_CACHE");
  if (!v.empty()) return v;
  v = env("HF_HOME");
  if (!v.empty()) return fs::path(v) / "hub";
  v = env("HOME");
  if (!v.empty()) return fs::path(v) / ".cache" / "huggingface" / "hub";
  return fs::path(".cache") / "huggingface" / "hub";
}

fs::path resolve_model_path(const std::string& arg) {
  if (arg.empty()) fail("model path is empty (give a folder or a Hugging Face name like org/name)");
  std::error_code ec;
  if (fs::is_directory(arg, ec)) return fs::path(arg);
  if (fs::exists(arg, ec)) fail("model path {} exists but is not a folder", arg);
  if (!looks_like_repo_id(arg))
    fail("model {} not found: it is not a folder, nor a Hugging Face name of the form org/name", arg);

  fs::path cache = hf_hub_cache_dir();
  std::string org = arg.substr(0, arg.find('/')), name = arg.substr(arg.find('/') + 1);
  fs::path repo = cache / ("models--" + org + "--" + name);
  fs::path ref = repo / "refs" / "main";
  std::ifstream f(ref);
  std::string hash;
  if (f) std::getline(f, hash);
  while (!hash.empty() && std::isspace(static_cast<unsigned char>(hash.back()))) hash.pop_back();
  if (hash.empty())
    fail("model {} not found: no folder named {}, and no Hugging Face cache entry at {} (cache {} from "
         "HF_HUB_CACHE / HF_HOME / ~/.cache/huggingface/hub)",
         arg, arg, ref.string(), cache.string());
  if (hash.find('/') != std::string::npos || hash == "." || hash == "..")
    fail("model {}: {} holds an invalid commit hash \"{}\"", arg, ref.string(), hash);
  fs::path snap = repo / "snapshots" / hash;
  if (!fs::is_directory(snap, ec))
    fail("model {} not found: {} points to commit {}, but {} is missing", arg, ref.string(), hash, snap.string());
  return snap;
}

}  // namespace dsv2
