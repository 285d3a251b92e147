#include "cli/model_args.h"

#include <charconv>

#include "common/error.h"
#include "common/log.h"
#include "common/thread_pool.h"
#include "io/model_path.h"
#ifdef DSV2_HAVE_CUDA
#include "backend/cuda/cuda_model.h"
#endif

namespace dsv2::cli {

namespace fs = std::filesystem;

void add_model_args(CLI::App& app, ModelArgs& a) {
  app.add_option("--model,-m", a.model,
                 "Model folder (Hugging Face layout) or a Hugging Face name found in the local cache; "
                 "default: the embedded demo model");
  app.add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--threads,-t", a.threads, "CPU threads (default: all hardware threads)");
  app.add_flag("--no-progress", a.no_progress, "Do not draw progress bars");
}

namespace {
fs::path default_model_dir() {
  if (const char* env = std::getenv("DSV2_DEFAULT_MODEL")) return env;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (fs::path p : {exe.parent_path() / "../share/dsv2/models/dsv2-demo", exe.parent_path() / "../models/dsv2-demo",
                     fs::path(DSV2_SOURCE_DIR) / "models/dsv2-demo"})
    if (fs::exists(p / "config.json")) return fs::weakly_canonical(p);
  fail("no --model given and the embedded default model was not found (looked next to the program and in {})",
       (fs::path(DSV2_SOURCE_DIR) / "models/dsv2-demo").string());
}
}  // namespace

fs::path prepare(const ModelArgs& a) {
  if (a.threads < 0) fail("--threads must be positive, got {}", a.threads);
  if (a.threads > 0) ThreadPool::set_global_threads(a.threads);
  if (a.model.empty()) {
    fs::path d = default_model_dir();
    log::info("load", "no --model given: using the embedded default model at {}", d.string());
    return d;
  }
  return resolve_model_path(a.model);
}

LoadedModel load_model(const ModelArgs& a, const CacheOptions& cache) {
  LoadedModel m;
  m.dir = prepare(a);
  const int device = parse_device(a.device);
  m.weights = ModelWeights::load(m.dir, !a.no_progress);
  const ModelConfig& c = m.weights->config;
  log::info("load", "{}: {}", m.dir.filename().string(), c.summary());
  log::info("load", "weights {} ({:.2f} GB of matrices), softmax scale {:.6f}, rope attention factor {:.6f}",
            dtype_name(m.weights->checkpoint_dtype), double(m.weights->matrix_bytes) / 1e9, c.softmax_scale(),
            c.rope_attention_factor());
  if (device < 0) {
    m.model = make_cpu_model(m.weights, cache);
  } else {
#ifdef DSV2_HAVE_CUDA
    if (!cuda::available()) fail("--device {}: no usable CUDA GPU was found", a.device);
    log::info("load", "GPU: {}", cuda::device_summary(device));
    m.model = cuda::make_model(m.weights, device, cache);
#else
    fail("--device {}: this dsv2 was built without the CUDA backend", a.device);
#endif
  }
  int64_t cache_tokens = int64_t(m.model->blocks().total()) * kCacheBlockSize;
  log::info("load", "device {}, latent cache {} tokens ({} bytes per token, {:.1f} MB)", m.model->device_name(),
            cache_tokens, m.model->cache_bytes_per_token(),
            double(cache_tokens) * double(m.model->cache_bytes_per_token()) / 1e6);
  return m;
}

int parse_device(const std::string& d) {
  if (d == "cpu") return -1;
  if (d == "cuda") return 0;
  if (d.rfind("cuda:", 0) == 0) {
    int v = -1;
    auto [p, ec] = std::from_chars(d.data() + 5, d.data() + d.size(), v);
    if (ec == std::errc() && p == d.data() + d.size() && v >= 0) return v;
  }
  fail("--device must be cpu, cuda or cuda:N, got '{}'", d);
}

std::vector<int32_t> parse_ids(const std::string& csv) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i <= csv.size()) {
    size_t j = csv.find(',', i);
    if (j == std::string::npos) j = csv.size();
    std::string tok = csv.substr(i, j - i);
    while (!tok.empty() && tok.front() == ' ') tok.erase(tok.begin());
    while (!tok.empty() && tok.back() == ' ') tok.pop_back();
    int32_t v = 0;
    auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
    if (tok.empty() || ec != std::errc() || p != tok.data() + tok.size() || v < 0)
      fail("--ids: '{}' is not a non-negative integer token id", tok);
    ids.push_back(v);
    i = j + 1;
  }
  return ids;
}

}  // namespace dsv2::cli
