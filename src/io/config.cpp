// config.json -> ModelConfig. Every field the reference lists is read; values the engine does not
// implement are refused with the key and value named.
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "model/config.h"

namespace dsv2 {

using json = nlohmann::json;

double yarn_mscale(double factor, double mscale) {
  if (factor <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(factor) + 1.0;
}

double ModelConfig::softmax_scale() const {
  double s = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope_scaling.yarn && rope_scaling.mscale_all_dim != 0.0) {
    double m = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

double ModelConfig::rope_attention_factor() const {
  if (!rope_scaling.yarn) return 1.0;
  return yarn_mscale(rope_scaling.factor, rope_scaling.mscale) /
         yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
}

std::string ModelConfig::summary() const {
  return fmt::format(
      "{} layers {}, hidden {}, heads {}, q_lora {}, kv_lora {}, rope {} ({}), experts {} routed + {} shared, "
      "top-{} {} (groups {}/{}), vocab {}",
      model_type, num_hidden_layers, hidden_size, num_attention_heads, q_lora_rank ? std::to_string(q_lora_rank) : "none",
      kv_lora_rank, qk_rope_head_dim, rope_scaling.yarn ? fmt::format("yarn x{}", rope_scaling.factor) : "plain",
      n_routed_experts, n_shared_experts, num_experts_per_tok,
      topk_method == TopkMethod::greedy ? "greedy" : "group_limited_greedy", topk_group, n_group, vocab_size);
}

namespace {

struct Reader {
  const json& j;
  const std::string& src;

  bool present(const char* key) const { return j.contains(key) && !j[key].is_null(); }

  int64_t i64(const char* key, bool required, int64_t def = 0) const {
    if (!present(key)) {
      if (required) fail("{}: required key \"{}\" is missing", src, key);
      return def;
    }
    const json& v = j[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) return int64_t(v.get<double>());
    fail("{}: key \"{}\" must be an integer, got {}", src, key, v.dump());
  }
  double f64(const char* key, double def) const {
    if (!present(key)) return def;
    const json& v = j[key];
    if (!v.is_number()) fail("{}: key \"{}\" must be a number, got {}", src, key, v.dump());
    return v.get<double>();
  }
  bool boolean(const char* key, bool def) const {
    if (!present(key)) return def;
    const json& v = j[key];
    if (!v.is_boolean()) fail("{}: key \"{}\" must be true or false, got {}", src, key, v.dump());
    return v.get<bool>();
  }
  std::string str(const char* key, const std::string& def) const {
    if (!present(key)) return def;
    const json& v = j[key];
    if (!v.is_string()) fail("{}: key \"{}\" must be a string, got {}", src, key, v.dump());
    return v.get<std::string>();
  }
};

void require_positive(const std::string& src, const char* key, int64_t v) {
  if (v <= 0) fail("{}: \"{}\" must be positive, got {}", src, key, v);
}

}  // namespace

ModelConfig parse_config(const json& j, const std::string& src) {
  if (!j.is_object()) fail("{}: config is not a JSON object", src);
  Reader r{j, src};
  ModelConfig c;
  c.model_type = r.str("model_type", "");
  if (c.model_type != "deepseek_v2" && c.model_type != "deepseek")
    fail("{}: unsupported \"model_type\": \"{}\" (supported: \"deepseek_v2\", \"deepseek\")", src, c.model_type);
  c.vocab_size = r.i64("vocab_size", true);
  c.hidden_size = r.i64("hidden_size", true);
  c.num_hidden_layers = r.i64("num_hidden_layers", true);
  c.num_attention_heads = r.i64("num_attention_heads", true);
  c.intermediate_size = r.i64("intermediate_size", false, 0);
  c.max_position_embeddings = r.i64("max_position_embeddings", false, 4096);
  c.rms_norm_eps = r.f64("rms_norm_eps", 1e-6);
  c.rope_theta = r.f64("rope_theta", 10000.0);
  c.q_lora_rank = r.i64("q_lora_rank", false, 0);
  c.kv_lora_rank = r.i64("kv_lora_rank", true);
  c.qk_nope_head_dim = r.i64("qk_nope_head_dim", true);
  c.qk_rope_head_dim = r.i64("qk_rope_head_dim", true);
  c.v_head_dim = r.i64("v_head_dim", true);
  c.n_routed_experts = r.i64("n_routed_experts", false, 0);
  c.n_shared_experts = r.i64("n_shared_experts", false, 0);
  c.moe_intermediate_size = r.i64("moe_intermediate_size", false, 0);
  c.num_experts_per_tok = r.i64("num_experts_per_tok", false, 0);
  c.n_group = r.i64("n_group", false, 1);
  c.topk_group = r.i64("topk_group", false, 1);
  c.routed_scaling_factor = r.f64("routed_scaling_factor", 1.0);
  c.norm_topk_prob = r.boolean("norm_topk_prob", false);
  c.first_k_dense_replace = r.i64("first_k_dense_replace", false, 0);
  c.moe_layer_freq = r.i64("moe_layer_freq", false, 1);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.bos_token_id = r.i64("bos_token_id", false, -1);
  c.eos_token_id = r.i64("eos_token_id", false, -1);
  c.torch_dtype = r.str("torch_dtype", r.str("dtype", ""));

  for (auto [key, v] : {std::pair{"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
                        {"num_hidden_layers", c.num_hidden_layers}, {"num_attention_heads", c.num_attention_heads},
                        {"kv_lora_rank", c.kv_lora_rank}, {"qk_nope_head_dim", c.qk_nope_head_dim},
                        {"qk_rope_head_dim", c.qk_rope_head_dim}, {"v_head_dim", c.v_head_dim}})
    require_positive(src, key, v);
  if (c.qk_rope_head_dim % 2) fail("{}: \"qk_rope_head_dim\" must be even, got {}", src, c.qk_rope_head_dim);
  if (c.q_lora_rank < 0) fail("{}: \"q_lora_rank\" must be null or positive, got {}", src, c.q_lora_rank);
  if (c.moe_layer_freq <= 0) fail("{}: \"moe_layer_freq\" must be positive, got {}", src, c.moe_layer_freq);
  if (c.first_k_dense_replace < 0) fail("{}: \"first_k_dense_replace\" must be >= 0, got {}", src, c.first_k_dense_replace);
  if (c.rms_norm_eps <= 0) fail("{}: \"rms_norm_eps\" must be positive, got {}", src, c.rms_norm_eps);
  if (c.rope_theta <= 0) fail("{}: \"rope_theta\" must be positive, got {}", src, c.rope_theta);

  std::string scoring = r.str("scoring_func", "softmax");
  if (scoring != "softmax") fail("{}: unsupported \"scoring_func\": \"{}\" (supported: \"softmax\")", src, scoring);
  std::string topk = r.str("topk_method", "greedy");
  if (topk == "greedy")
    c.topk_method = TopkMethod::greedy;
  else if (topk == "group_limited_greedy")
    c.topk_method = TopkMethod::group_limited_greedy;
  else
    fail("{}: unsupported \"topk_method\": \"{}\" (supported: \"greedy\", \"group_limited_greedy\")", src, topk);
  if (r.present("hidden_act") && r.str("hidden_act", "silu") != "silu")
    fail("{}: unsupported \"hidden_act\": \"{}\" (supported: \"silu\")", src, r.str("hidden_act", ""));
  if (r.present("attention_bias") && r.boolean("attention_bias", false))
    fail("{}: unsupported \"attention_bias\": true (DeepSeek-V2 attention has no bias)", src);
  if (r.present("ep_size") && r.i64("ep_size", false, 1) != 1)
    fail("{}: unsupported \"ep_size\": {} (only 1)", src, r.i64("ep_size", false, 1));

  if (c.intermediate_size <= 0) {
    bool any_dense = false;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) any_dense |= !c.is_moe_layer(l);
    if (any_dense) fail("{}: \"intermediate_size\" is required for the dense layers", src);
  }
  if (c.n_routed_experts > 0) {
    require_positive(src, "moe_intermediate_size", c.moe_intermediate_size);
    require_positive(src, "num_experts_per_tok", c.num_experts_per_tok);
    if (c.num_experts_per_tok > c.n_routed_experts)
      fail("{}: \"num_experts_per_tok\" {} exceeds \"n_routed_experts\" {}", src, c.num_experts_per_tok,
           c.n_routed_experts);
    if (c.n_shared_experts < 0) fail("{}: \"n_shared_experts\" must be >= 0", src);
    if (c.topk_method == TopkMethod::group_limited_greedy) {
      if (c.n_group <= 0 || c.n_routed_experts % c.n_group)
        fail("{}: \"n_group\" {} must divide \"n_routed_experts\" {}", src, c.n_group, c.n_routed_experts);
      if (c.topk_group <= 0 || c.topk_group > c.n_group)
        fail("{}: \"topk_group\" {} must be in [1, n_group={}]", src, c.topk_group, c.n_group);
      if (c.topk_group * (c.n_routed_experts / c.n_group) < c.num_experts_per_tok)
        fail("{}: \"topk_group\" {} groups hold fewer experts than \"num_experts_per_tok\" {}", src, c.topk_group,
             c.num_experts_per_tok);
    }
  }

  if (r.present("rope_scaling")) {
    const json& rs = j["rope_scaling"];
    if (!rs.is_object()) fail("{}: \"rope_scaling\" must be an object or null", src);
    Reader rr{rs, src};
    std::string type = rr.str("type", rr.str("rope_type", ""));
    if (type != "yarn")
      fail("{}: unsupported \"rope_scaling.type\": \"{}\" (supported: \"yarn\" or rope_scaling null)", src, type);
    c.rope_scaling.yarn = true;
    c.rope_scaling.factor = rr.f64("factor", 1.0);
    c.rope_scaling.original_max_position = rr.i64("original_max_position_embeddings", false, 4096);
    c.rope_scaling.beta_fast = rr.f64("beta_fast", 32.0);
    c.rope_scaling.beta_slow = rr.f64("beta_slow", 1.0);
    c.rope_scaling.mscale = rr.f64("mscale", 1.0);
    c.rope_scaling.mscale_all_dim = rr.f64("mscale_all_dim", 0.0);
    if (c.rope_scaling.factor < 1.0) fail("{}: \"rope_scaling.factor\" must be >= 1, got {}", src, c.rope_scaling.factor);
    require_positive(src, "rope_scaling.original_max_position_embeddings", c.rope_scaling.original_max_position);
  }
  return c;
}

ModelConfig load_config(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read {}", path.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
  return parse_config(j, path.string());
}

}  // namespace dsv2
