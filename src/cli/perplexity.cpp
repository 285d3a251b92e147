// dsv2 perplexity: perplexity of a text file under the model. The text is tokenized without BOS and
// cut into consecutive windows of --window tokens (a last window of at least 2 tokens is kept); each
// window is evaluated from an empty cache, predicting its tokens 1.. from their prefixes;
// ppl = exp(total negative log-likelihood / predicted tokens).
#include <cmath>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/model_args.h"
#include "common/error.h"
#include "common/log.h"
#include "tokenizer/tokenizer.h"

namespace dsv2::cli {
namespace {

struct PerplexityArgs {
  ModelArgs model;
  std::string file;
  int64_t window = 256;
  int64_t batch_windows = 8;
};

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<PerplexityArgs>();
  add_model_args(app, a->model);
  app.add_option("--file,-f", a->file, "Text file")->required();
  app.add_option("--window", a->window, "Tokens per window")->capture_default_str();
  app.add_option("--batch", a->batch_windows, "Windows evaluated together")->capture_default_str();
  return [a] {
    if (a->window < 2) fail("--window must be at least 2, got {}", a->window);
    if (a->batch_windows < 1) fail("--batch must be at least 1, got {}", a->batch_windows);
    std::ifstream in(a->file, std::ios::binary);
    if (!in) fail("cannot read {}", a->file);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    std::filesystem::path dir = prepare(a->model);
    Tokenizer tok = Tokenizer::from_folder(dir);
    std::vector<int32_t> ids = tok.encode(text, false);
    std::vector<std::pair<size_t, size_t>> windows;
    for (size_t b = 0; b < ids.size(); b += size_t(a->window)) {
      size_t n = std::min(ids.size() - b, size_t(a->window));
      if (n >= 2) windows.push_back({b, n});
    }
    if (windows.empty()) fail("{}: the text has fewer than 2 tokens", a->file);
    CacheOptions co;
    co.max_tokens = a->window * a->batch_windows + kCacheBlockSize * a->batch_windows;
    ModelArgs ma = a->model;
    ma.model = dir.string();
    LoadedModel m = load_model(ma, co);
    const int64_t V = m.model->config().vocab_size;
    double nll = 0;
    int64_t predicted = 0;
    for (size_t w0 = 0; w0 < windows.size(); w0 += size_t(a->batch_windows)) {
      size_t nw = std::min(windows.size() - w0, size_t(a->batch_windows));
      std::vector<SequenceCache> seqs(nw);
      std::vector<SeqChunk> chunks;
      size_t rows = 0;
      for (size_t k = 0; k < nw; ++k) {
        auto [b, n] = windows[w0 + k];
        if (!reserve(m.model->blocks(), seqs[k], int64_t(n))) fail("internal: cache too small");
        chunks.push_back({&seqs[k], std::span<const int32_t>(ids.data() + b, n), true});
        rows += n;
      }
      std::vector<float> logits(rows * size_t(V));
      m.model->forward(chunks, logits.data());
      size_t row = 0;
      for (size_t k = 0; k < nw; ++k) {
        auto [b, n] = windows[w0 + k];
        for (size_t t = 0; t + 1 < n; ++t) {
          const float* l = &logits[(row + t) * size_t(V)];
          double mx = l[0];
          for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
          double s = 0;
          for (int64_t v = 0; v < V; ++v) s += std::exp(double(l[v]) - mx);
          nll += mx + std::log(s) - double(l[ids[b + t + 1]]);
          ++predicted;
        }
        row += n;
        release_all(m.model->blocks(), seqs[k]);
      }
    }
    double ppl = std::exp(nll / double(predicted));
    nlohmann::json j;
    j["perplexity"] = ppl;
    j["mean_nll"] = nll / double(predicted);
    j["predicted_tokens"] = predicted;
    j["tokens"] = ids.size();
    j["windows"] = windows.size();
    j["window"] = a->window;
    std::printf("%s\n", j.dump().c_str());
    log::info("perplexity", "{}: {:.4f} over {} predicted tokens in {} windows", a->file, ppl, predicted, windows.size());
    return 0;
  };
}

DSV2_COMMAND("perplexity", "Perplexity of a text file (windows of --window tokens)", setup);

}  // namespace
}  // namespace dsv2::cli
