// dsv2 logits: the model's fp32 logits after every token of --ids, as a NumPy .npy file.
#include "cli/command.h"
#include "cli/model_args.h"
#include "common/error.h"
#include "io/npy.h"

namespace dsv2::cli {
namespace {

struct LogitsArgs {
  ModelArgs model;
  std::string ids, out;
};

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<LogitsArgs>();
  add_model_args(app, a->model);
  app.add_option("--ids", a->ids, "Comma-separated token ids (no BOS is added)")->required();
  app.add_option("--out,-o", a->out, "Output .npy file: float32 [number of ids, vocab_size]")->required();
  return [a] {
    std::vector<int32_t> ids = parse_ids(a->ids);
    CacheOptions co;
    co.max_tokens = int64_t(ids.size());
    LoadedModel m = load_model(a->model, co);
    const int64_t V = m.model->config().vocab_size;
    for (int32_t id : ids)
      if (id >= V) fail("--ids: token id {} is outside the vocabulary [0, {})", id, V);
    SequenceCache seq;
    if (!reserve(m.model->blocks(), seq, int64_t(ids.size()))) fail("internal: cache too small");
    std::vector<float> logits(ids.size() * size_t(V));
    SeqChunk ch{&seq, ids, true};
    m.model->forward({&ch, 1}, logits.data());
    write_npy_f32(a->out, logits.data(), {int64_t(ids.size()), V});
    return 0;
  };
}

DSV2_COMMAND("logits", "Write the logits after each token of --ids to a .npy file", setup);

}  // namespace
}  // namespace dsv2::cli
