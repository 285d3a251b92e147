#pragma once
// The DeepSeek-V2 MoE router on one token, in fp32 (reference section 3): softmax over all routed
// experts, greedy or group-limited top-k, then renormalization or routed_scaling_factor.
#include <cstdint>

#include "model/config.h"

namespace dsv2 {

// logits[n_routed] in; ids[top_k] and weights[top_k] out, in descending score order
// (ties: lower expert id first). `scratch` needs 2 * n_routed floats.
void route_token(const ModelConfig& c, const float* logits, int32_t* ids, float* weights, float* scratch);

}  // namespace dsv2
