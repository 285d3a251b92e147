#pragma once
// The engine's view of a loaded model on one backend: run a batch of sequence chunks through the
// network, appending to each sequence's paged latent cache, and return logits.
//
// A batch mixes prefill chunks (many tokens) and decode steps (one token) of different sequences;
// matrix products run over all rows of the batch at once, attention per sequence over its cache.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/block_allocator.h"

namespace dsv2 {

struct ModelWeights;

struct SeqChunk {
  SequenceCache* seq = nullptr;        // blocks must already cover seq->length + tokens.size()
  std::span<const int32_t> tokens;     // new tokens at positions seq->length, seq->length+1, ...
  bool all_logits = false;             // logits for every token; otherwise for the last one only
};

// What the caller of Model::forward_select needs of one logits row.
enum class RowUse : uint8_t {
  logits,  // the whole row (it samples on the host)
  greedy,  // only the lowest id of the row's largest logit among ids below vocab_limit
  sample,  // only an id drawn with its RowSampling (backends whose samples_rows() is true)
  none,    // nothing (a prompt chunk that does not sample yet)
};

// A RowUse::sample row's draw: the host sampler's pipeline without penalties (softmax at temperature,
// then top-k, top-p over what top-k kept, min-p relative to the most likely token), one uniform u
// in [0, 1) from the request's generator picking by the inverse CDF over the kept ids in id order.
struct RowSampling {
  float temperature = 1.f;  // > 0
  float top_p = 1.f;
  float min_p = 0.f;
  int32_t top_k = 0;
  double u = 0;
};

struct CacheOptions {
  int64_t max_tokens = 0;        // cache capacity in tokens over all sequences; 0 = backend default
  double memory_fraction = 0.9;  // CUDA: share of free device memory after the weights
  // CPU: a chunk of at least this many new tokens attends decompressed (k_nope and v materialized
  // per head from the latents, cheaper for long prompts); shorter chunks and decode use the
  // absorbed form. 0 = always absorbed.
  int64_t decompress_min_tokens = 256;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string device_name() const = 0;
  virtual BlockAllocator& blocks() = 0;
  // Bytes of latent cache per token over all layers: layers x (kv_lora + rope) x element size.
  virtual size_t cache_bytes_per_token() const = 0;
  // Number of logits rows `forward` writes for this batch.
  static int64_t logits_rows(std::span<const SeqChunk> batch);
  // Runs the batch, advances each seq->length, and writes logits_rows(batch) x vocab_size floats.
  virtual void forward(std::span<const SeqChunk> batch, float* logits) = 0;
  // forward() for callers that need whole rows only for some: row r (as forward() numbers them) gets
  // `use[r]`. Greedy and sample rows get ids[r] (other rows' ids are unspecified); only logits rows of `logits`
  // (still logits_rows(batch) x vocab_size floats) are written. This default runs forward() and takes
  // the argmax on the host; the CUDA backend chooses on the device and copies only the rows needed.
  // sampling[r] describes the RowUse::sample rows (may be null without any).
  virtual void forward_select(std::span<const SeqChunk> batch, const RowUse* use, const RowSampling* sampling,
                              int64_t vocab_limit, float* logits, int32_t* ids);
  // Whether forward_select draws RowUse::sample rows itself (the CUDA backend); the default refuses them.
  virtual bool samples_rows() const { return false; }
  // forward_select for a batch whose rows need no logits (RowUse greedy, sample or none), queued: `ids`
  // (which must stay valid) holds the ids once wait_selected() has returned for this pass. Passes
  // complete in the order they were queued, at most two in flight. chain: every chunk is one token
  // whose input is the id that the previous queued pass chose for the row of the same index (the
  // chunk's own value is not read), so that a decode step can be queued before the host has seen the
  // last one; that pass must have chosen an id for each of its rows, one row per chunk.
  // This default runs the pass at once (wait_selected() then has nothing to wait for).
  virtual void queue_select(std::span<const SeqChunk> batch, const RowUse* use, const RowSampling* sampling,
                            int64_t vocab_limit, int32_t* ids, bool chain);
  // Waits for the oldest queued pass; false when none is pending.
  virtual bool wait_selected() { return false; }
  // Whether queue_select returns before the pass has run (the CUDA backend).
  virtual bool queues_passes() const { return false; }

 protected:
  // queue_select's check: fails naming the first row whose use is RowUse::logits.
  static void refuse_logits_rows(std::span<const SeqChunk> batch, const RowUse* use);

 private:
  std::vector<int32_t> chain_ids_;  // the default queue_select: the last pass's ids (empty: not chainable)
  std::vector<float> queue_logits_;
};

std::unique_ptr<Model> make_cpu_model(std::shared_ptr<const ModelWeights> weights, const CacheOptions& opts);

}  // namespace dsv2
