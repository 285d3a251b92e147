#pragma once
// The CUDA backend as host code sees it: no CUDA types here, so any .cpp can include it.
// A CUDA model holds every weight on one GPU in bf16 (uploaded once), the paged latent cache sized
// from the memory left after the weights, and runs the same forward pass as the CPU backend.
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "model/model.h"

namespace dsv2 {
struct ModelWeights;
}

namespace dsv2::cuda {

// A usable GPU is present (the driver answers and at least one device is visible).
bool available();
int device_count();
// Name, memory and multiprocessor count of `device`, for the log.
std::string device_summary(int device);

// Uploads `w` to `device` in bf16 (with a progress bar on stderr).
std::unique_ptr<Model> make_model(std::shared_ptr<const ModelWeights> w, int device, const CacheOptions& opts);
// Random weights of the shapes in `c`, generated on the device (nothing is read from disk); the
// cache is filled with random values too, so that a sequence can start at any length.
std::unique_ptr<Model> make_synthetic_model(const ModelConfig& c, int device, uint64_t seed, const CacheOptions& opts);

struct SampleOptions {
  float temperature = 0.0f;   // <= 0: greedy argmax
  float top_p = 1.0f;
  uint64_t seed = 0;
  int64_t vocab_limit = 0;    // > 0: only ids below this are candidates (padding rows excluded)
};

// What a CUDA model offers beyond the Model interface.
class CudaModel : public Model {
 public:
  // forward() with the token choice made on the device: one id per logits row; only ids cross
  // to the host. `step` feeds the sampler's counter-based generator.
  virtual void forward_sample(std::span<const SeqChunk> batch, const SampleOptions& opt, uint64_t step,
                              int32_t* tokens) = 0;
  // forward_sample without waiting for the pass: it is queued, and `tokens` (which must stay valid)
  // receives its ids when wait_sampled() returns for it. Passes complete in the order they were
  // queued; at most two are in flight (queuing a third first waits for the oldest).
  // chain: every chunk is one token whose input is the id that the previous sampled pass chose on
  // the device for the row of the same index (the chunk's host value is not read), so the next decode
  // step can be queued before the host has seen the last one; that pass must have had one row per chunk.
  virtual void queue_sample(std::span<const SeqChunk> batch, const SampleOptions& opt, uint64_t step,
                            int32_t* tokens, bool chain) = 0;
  // Waits for the oldest queued pass and writes its ids; false when none is queued.
  virtual bool wait_sampled() = 0;
  // Decode-only batches replay CUDA graphs captured per (batch size, split count); on by default.
  virtual void set_graphs(bool on) = 0;
  // Device-to-device copy bandwidth measured now over a large buffer: (bytes read + written) / s.
  virtual double copy_bandwidth() = 0;
  virtual size_t weight_bytes() const = 0;
  // Capacity of the latent cache in tokens.
  virtual int64_t cache_tokens() const = 0;
  // With DSV2_CUDA_PROFILE set (eager passes, events between the stages): logs the GPU time per
  // stage and per pass accumulated since the last call under `label`, then starts again; an empty
  // label discards (warm-up). Without DSV2_CUDA_PROFILE it does nothing.
  virtual void profile_report(const std::string& label) = 0;
};

// The CUDA model behind `m`, or nullptr when `m` is another backend.
CudaModel* as_cuda(Model* m);

}  // namespace dsv2::cuda
