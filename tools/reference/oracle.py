"""Float64 NumPy oracle of the DeepSeek-V2 forward pass.

Written from section 3 of deepseek-v2-reference.md (the project's model contract).
Everything is computed in float64 from the checkpoint's weights widened exactly
(bf16/f16/f32 -> f64), so it is a reference for engines that compute in lower precision.

API:
  forward(folder, ids)            -> float64 logits [T, V], decompressed MLA, no cache
  forward_absorbed(folder, ids)   -> same logits computed token by token from a latent cache
                                     (c, k_pe per layer) with W_UK absorbed into the query
  greedy(folder, ids, n)          -> n greedily generated ids (argmax over the whole vocabulary)
  greedy_with_margins(folder, ids, n) -> (ids, top1 - top2 logit gap at every step)
`folder` may also be a Model from load_model(folder).

Run with the Debian interpreter: /usr/bin/python3 oracle.py FOLDER ID [ID ...] [--greedy N]
"""

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

MODEL_TYPES = {"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek": "DeepseekForCausalLM"}
LATENT_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm: the original code never passes rms_norm_eps


class ConfigError(ValueError):
    pass


def _fail(path, key, value, why):
    raise ConfigError(f"{path}: unsupported {key} = {json.dumps(value)}: {why}")


class Config:
    """Every hyperparameter the forward pass reads, validated."""

    def __init__(self, raw, path="config.json"):
        self.raw = raw

        def req(key, kind=int):
            if key not in raw or raw[key] is None:
                raise ConfigError(f"{path}: missing required key {key}")
            v = raw[key]
            if kind is int and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                _fail(path, key, v, "expected a positive integer")
            if kind is float and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                _fail(path, key, v, "expected a number")
            return v

        mt = raw.get("model_type")
        if mt not in MODEL_TYPES:
            _fail(path, "model_type", mt, f"expected one of {sorted(MODEL_TYPES)}")
        arch = raw.get("architectures")
        if arch is not None and (not isinstance(arch, list) or len(arch) != 1
                                 or arch[0] not in MODEL_TYPES.values()):
            _fail(path, "architectures", arch, f"expected one of {sorted(MODEL_TYPES.values())}")

        self.hidden = req("hidden_size")
        self.n_layers = req("num_hidden_layers")
        self.n_heads = req("num_attention_heads")
        self.q_lora_rank = raw.get("q_lora_rank")
        if self.q_lora_rank is not None:
            self.q_lora_rank = req("q_lora_rank")
        self.kv_lora_rank = req("kv_lora_rank")
        self.nope = req("qk_nope_head_dim")
        self.rope = req("qk_rope_head_dim")
        if self.rope % 2:
            _fail(path, "qk_rope_head_dim", self.rope, "must be even (rotation pairs)")
        self.v_dim = req("v_head_dim")
        self.vocab = req("vocab_size")
        self.eps = float(req("rms_norm_eps", float))
        if not self.eps > 0:
            _fail(path, "rms_norm_eps", self.eps, "must be > 0")
        self.rope_theta = float(raw.get("rope_theta", 10000.0))
        if not self.rope_theta > 1:
            _fail(path, "rope_theta", self.rope_theta, "must be > 1")

        act = raw.get("hidden_act", "silu")
        if act != "silu":
            _fail(path, "hidden_act", act, "only silu is implemented")
        if raw.get("attention_bias", False):
            _fail(path, "attention_bias", raw["attention_bias"], "biases are not implemented")
        if raw.get("tie_word_embeddings", False):
            _fail(path, "tie_word_embeddings", raw["tie_word_embeddings"], "DeepSeek-V2 has a separate lm_head")

        # FFN layout
        self.n_routed = raw.get("n_routed_experts")
        self.first_dense = raw.get("first_k_dense_replace", 0)
        self.moe_freq = raw.get("moe_layer_freq", 1)
        if not isinstance(self.first_dense, int) or self.first_dense < 0:
            _fail(path, "first_k_dense_replace", self.first_dense, "expected an integer >= 0")
        if not isinstance(self.moe_freq, int) or self.moe_freq < 1:
            _fail(path, "moe_layer_freq", self.moe_freq, "expected an integer >= 1")
        self.moe_layers = [self.n_routed is not None and i >= self.first_dense and i % self.moe_freq == 0
                           for i in range(self.n_layers)]
        if not all(self.moe_layers):
            self.inter = req("intermediate_size")
        if self.n_routed is not None:
            self.n_routed = req("n_routed_experts")
            self.moe_inter = req("moe_intermediate_size")
            self.top_k = req("num_experts_per_tok")
            if self.top_k > self.n_routed:
                _fail(path, "num_experts_per_tok", self.top_k, f"more than n_routed_experts {self.n_routed}")
            self.n_shared = raw.get("n_shared_experts")
            if self.n_shared is not None:
                self.n_shared = req("n_shared_experts")
            sf = raw.get("scoring_func", "softmax")
            if sf != "softmax":
                _fail(path, "scoring_func", sf, "only softmax is implemented")
            self.topk_method = raw.get("topk_method", "greedy")
            if self.topk_method not in ("greedy", "group_limited_greedy"):
                _fail(path, "topk_method", self.topk_method, "expected greedy or group_limited_greedy")
            self.n_group = raw.get("n_group", 1)
            self.topk_group = raw.get("topk_group", 1)
            if self.topk_method == "group_limited_greedy":
                self.n_group = req("n_group")
                self.topk_group = req("topk_group")
                if self.n_routed % self.n_group:
                    _fail(path, "n_group", self.n_group, f"does not divide n_routed_experts {self.n_routed}")
                if self.topk_group > self.n_group:
                    _fail(path, "topk_group", self.topk_group, f"more than n_group {self.n_group}")
                if self.top_k > self.topk_group * (self.n_routed // self.n_group):
                    _fail(path, "num_experts_per_tok", self.top_k, "more than the experts of topk_group groups")
            self.norm_topk_prob = raw.get("norm_topk_prob", False)
            if not isinstance(self.norm_topk_prob, bool):
                _fail(path, "norm_topk_prob", self.norm_topk_prob, "expected true or false")
            self.routed_scaling_factor = float(raw.get("routed_scaling_factor", 1.0))

        # RoPE / YaRN
        rs = raw.get("rope_scaling")
        self.yarn = None
        if rs is not None:
            if not isinstance(rs, dict):
                _fail(path, "rope_scaling", rs, "expected an object or null")
            kind = rs.get("type", rs.get("rope_type"))
            if kind != "yarn":
                _fail(path, "rope_scaling.type", kind, "only yarn is implemented")
            for key in ("factor", "original_max_position_embeddings"):
                if key not in rs:
                    raise ConfigError(f"{path}: rope_scaling lacks {key}")
            self.yarn = {
                "factor": float(rs["factor"]),
                "original_max_position_embeddings": int(rs["original_max_position_embeddings"]),
                "beta_fast": float(rs.get("beta_fast", 32)),
                "beta_slow": float(rs.get("beta_slow", 1)),
                "mscale": float(rs.get("mscale", 1)),
                "mscale_all_dim": float(rs.get("mscale_all_dim", 0)),
            }
            if not self.yarn["factor"] >= 1:
                _fail(path, "rope_scaling.factor", rs["factor"], "must be >= 1")
        self.inv_freq, self.attention_factor = rope_inv_freq(self.rope, self.rope_theta, self.yarn)
        self.scale = softmax_scale(self.nope + self.rope, self.yarn)

    def is_moe(self, layer):
        return self.moe_layers[layer]


# ----------------------------------------------------------------------------- RoPE / scales

def yarn_mscale(factor, mscale):
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_correction_range(dim, base, beta_fast, beta_slow, original):
    def corr(r):
        return dim * math.log(original / (r * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), dim - 1)
    return low, high


def rope_inv_freq(dim, base, yarn):
    """-> (inv_freq [dim/2] float64, attention_factor multiplying cos and sin)."""
    i = np.arange(dim // 2, dtype=np.float64)
    extra = base ** (-2.0 * i / dim)
    if yarn is None:
        return extra, 1.0
    f = yarn["factor"]
    inter = extra / f
    low, high = yarn_correction_range(dim, base, yarn["beta_fast"], yarn["beta_slow"],
                                      yarn["original_max_position_embeddings"])
    hi = high + 0.001 if high == low else high
    ramp = np.clip((i - low) / (hi - low), 0.0, 1.0)
    mask = 1.0 - ramp
    inv_freq = inter * (1.0 - mask) + extra * mask
    attention_factor = yarn_mscale(f, yarn["mscale"]) / yarn_mscale(f, yarn["mscale_all_dim"])
    return inv_freq, attention_factor


def softmax_scale(qk_dim, yarn):
    """(nope+rope)^-0.5 * m^2 with m from mscale_all_dim (YaRN only)."""
    scale = qk_dim ** -0.5
    if yarn is not None and yarn["mscale_all_dim"]:
        m = yarn_mscale(yarn["factor"], yarn["mscale_all_dim"])
        # s * (m*m); (s*m)*m differs in the last bit (0.1147213867929261 for the published config)
        scale = scale * (m * m)
    return scale


def rope_cos_sin(inv_freq, attention_factor, positions):
    ang = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)  # [T, rope/2]
    return np.cos(ang) * attention_factor, np.sin(ang) * attention_factor


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs (x[2i], x[2i+1]) by inv_freq[i]; output de-interleaved
    ([all rotated evens | all rotated odds]) as the original code writes it.
    x [..., rope] with cos/sin broadcastable to [..., rope/2]."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    return np.concatenate([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)


# ----------------------------------------------------------------------------- model

class Model:
    def __init__(self, folder):
        self.folder = folder
        cfg_path = os.path.join(folder, "config.json")
        with open(cfg_path) as f:
            self.cfg = Config(json.load(f), cfg_path)
        stored = safetensors_np.load_folder(folder)
        expected = expected_shapes(self.cfg)
        unexpected = sorted(set(stored) - set(expected))
        if unexpected:
            raise ValueError(f"{folder}: unexpected tensors {unexpected[:5]}")
        self.w = {}
        for name, shape in expected.items():
            if name not in stored:
                raise ValueError(f"{folder}: missing tensor {name}")
            t = stored[name]
            if t.dtype not in ("BF16", "F16", "F32"):
                raise ValueError(f"{folder}: tensor {name} has dtype {t.dtype}, expected BF16, F16 or F32")
            if t.shape != tuple(shape):
                raise ValueError(f"{folder}: tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
            self.w[name] = t.to_float64()


def expected_shapes(c):
    s = {"model.embed_tokens.weight": (c.vocab, c.hidden), "model.norm.weight": (c.hidden,),
         "lm_head.weight": (c.vocab, c.hidden)}
    qk = c.nope + c.rope
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (c.hidden,)
        s[p + "post_attention_layernorm.weight"] = (c.hidden,)
        a = p + "self_attn."
        if c.q_lora_rank is None:
            s[a + "q_proj.weight"] = (c.n_heads * qk, c.hidden)
        else:
            s[a + "q_a_proj.weight"] = (c.q_lora_rank, c.hidden)
            s[a + "q_a_layernorm.weight"] = (c.q_lora_rank,)
            s[a + "q_b_proj.weight"] = (c.n_heads * qk, c.q_lora_rank)
        s[a + "kv_a_proj_with_mqa.weight"] = (c.kv_lora_rank + c.rope, c.hidden)
        s[a + "kv_a_layernorm.weight"] = (c.kv_lora_rank,)
        s[a + "kv_b_proj.weight"] = (c.n_heads * (c.nope + c.v_dim), c.kv_lora_rank)
        s[a + "o_proj.weight"] = (c.hidden, c.n_heads * c.v_dim)
        m = p + "mlp."
        if c.is_moe(i):
            s[m + "gate.weight"] = (c.n_routed, c.hidden)
            for e in range(c.n_routed):
                _mlp_shapes(s, f"{m}experts.{e}.", c.hidden, c.moe_inter)
            if c.n_shared is not None:
                _mlp_shapes(s, m + "shared_experts.", c.hidden, c.n_shared * c.moe_inter)
        else:
            _mlp_shapes(s, m, c.hidden, c.inter)
    return s


def _mlp_shapes(s, prefix, hidden, inter):
    s[prefix + "gate_proj.weight"] = (inter, hidden)
    s[prefix + "up_proj.weight"] = (inter, hidden)
    s[prefix + "down_proj.weight"] = (hidden, inter)


_CACHE = {}


def load_model(folder):
    if isinstance(folder, Model):
        return folder
    key = os.path.abspath(folder)
    if key not in _CACHE:
        _CACHE[key] = Model(folder)
    return _CACHE[key]


# ----------------------------------------------------------------------------- ops

def rms_norm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(x):
    return x / (1.0 + np.exp(-x))


def mlp(w, prefix, x):
    g = x @ w[prefix + "gate_proj.weight"].T
    u = x @ w[prefix + "up_proj.weight"].T
    return (silu(g) * u) @ w[prefix + "down_proj.weight"].T


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def route(c, router_logits, trace=None):
    """Router for tokens [T, n_routed] -> (expert ids [T, k] in descending weight order, weights [T, k]).
    trace (a list) receives, per token, the smallest router-logit gap that decided the selection."""
    s = softmax(router_logits)
    T, E = s.shape
    ids = np.zeros((T, c.top_k), dtype=np.int64)
    for t in range(T):
        cand = s[t].copy()
        gap = math.inf
        if c.topk_method == "group_limited_greedy":
            gs = cand.reshape(c.n_group, E // c.n_group).max(axis=1)
            order = np.argsort(-gs, kind="stable")
            keep = order[:c.topk_group]
            if c.topk_group < c.n_group:
                gap = min(gap, math.log(gs[order[c.topk_group - 1]]) - math.log(gs[order[c.topk_group]]))
            mask = np.zeros(c.n_group, dtype=bool)
            mask[keep] = True
            cand = np.where(np.repeat(mask, E // c.n_group), cand, 0.0)
        order = np.argsort(-cand, kind="stable")
        ids[t] = order[:c.top_k]
        if c.top_k < E and cand[order[c.top_k]] > 0:
            gap = min(gap, math.log(cand[order[c.top_k - 1]]) - math.log(cand[order[c.top_k]]))
        if trace is not None:
            trace.append(gap)
    w = np.take_along_axis(s, ids, axis=1)
    if c.top_k > 1 and c.norm_topk_prob:
        w = w / (np.sum(w, axis=1, keepdims=True) + 1e-20)
    else:
        w = w * c.routed_scaling_factor
    return ids, w


def ffn(model, layer, x, trace=None):
    c, w = model.cfg, model.w
    p = f"model.layers.{layer}.mlp."
    if not c.is_moe(layer):
        return mlp(w, p, x)
    ids, wt = route(c, x @ w[p + "gate.weight"].T, trace)
    out = np.zeros_like(x)
    for e in range(c.n_routed):
        rows, slot = np.nonzero(ids == e)
        if rows.size:
            out[rows] += wt[rows, slot][:, None] * mlp(w, f"{p}experts.{e}.", x[rows])
    if c.n_shared is not None:
        out += mlp(w, p + "shared_experts.", x)
    return out


def _q_and_latent(model, layer, x, positions):
    """Shared front half of MLA for tokens x [T, H] at positions [T]:
    -> q_nope [T, h, nope], q_pe (roped) [T, h, rope], c (normalized) [T, kv_lora], k_pe (roped) [T, rope]."""
    c, w = model.cfg, model.w
    a = f"model.layers.{layer}.self_attn."
    if c.q_lora_rank is None:
        q = x @ w[a + "q_proj.weight"].T
    else:
        qa = rms_norm(x @ w[a + "q_a_proj.weight"].T, w[a + "q_a_layernorm.weight"], LATENT_NORM_EPS)
        q = qa @ w[a + "q_b_proj.weight"].T
    q = q.reshape(x.shape[0], c.n_heads, c.nope + c.rope)
    q_nope, q_pe = q[..., :c.nope], q[..., c.nope:]
    kv = x @ w[a + "kv_a_proj_with_mqa.weight"].T                   # [T, kv_lora + rope]
    lat = rms_norm(kv[:, :c.kv_lora_rank], w[a + "kv_a_layernorm.weight"], LATENT_NORM_EPS)
    k_pe = kv[:, c.kv_lora_rank:]
    cos, sin = rope_cos_sin(c.inv_freq, c.attention_factor, positions)  # [T, rope/2]
    q_pe = apply_rope(q_pe, cos[:, None, :], sin[:, None, :])
    k_pe = apply_rope(k_pe, cos, sin)
    return q_nope, q_pe, lat, k_pe


def _w_uk_uv(model, layer):
    c = model.cfg
    kvb = model.w[f"model.layers.{layer}.self_attn.kv_b_proj.weight"]
    kvb = kvb.reshape(c.n_heads, c.nope + c.v_dim, c.kv_lora_rank)
    return kvb[:, :c.nope, :], kvb[:, c.nope:, :]                  # [h, nope, kv_lora], [h, v, kv_lora]


def attention(model, layer, x):
    """Decompressed MLA over the whole sequence x [T, H], causal."""
    c = model.cfg
    T = x.shape[0]
    q_nope, q_pe, lat, k_pe = _q_and_latent(model, layer, x, np.arange(T))
    w_uk, w_uv = _w_uk_uv(model, layer)
    k_nope = np.einsum("hdc,tc->thd", w_uk, lat)                    # [T, h, nope]
    v = np.einsum("hdc,tc->thd", w_uv, lat)                         # [T, h, v]
    scores = np.einsum("thd,shd->hts", q_nope, k_nope) + np.einsum("thd,sd->hts", q_pe, k_pe)
    scores = scores * c.scale
    scores = np.where(np.tril(np.ones((T, T), dtype=bool))[None], scores, -np.inf)
    p = softmax(scores)                                             # [h, T, T]
    o = np.einsum("hts,shd->thd", p, v).reshape(T, c.n_heads * c.v_dim)
    return o @ model.w[f"model.layers.{layer}.self_attn.o_proj.weight"].T


def forward(folder, ids, trace=None):
    """float64 logits [T, V] for token ids (no BOS added), decompressed attention, no cache."""
    model = load_model(folder)
    c, w = model.cfg, model.w
    ids = _check_ids(c, ids)
    x = w["model.embed_tokens.weight"][ids]                         # [T, H]
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        x = x + attention(model, i, rms_norm(x, w[p + "input_layernorm.weight"], c.eps))
        x = x + ffn(model, i, rms_norm(x, w[p + "post_attention_layernorm.weight"], c.eps), trace)
    x = rms_norm(x, w["model.norm.weight"], c.eps)
    return x @ w["lm_head.weight"].T


def forward_absorbed(folder, ids):
    """The same logits, one token at a time: per layer cache only the normalized latent c [kv_lora]
    and the roped k_pe [rope]; score_h(t,j) = scale*((W_UK_h^T q_nope_h).c_j + q_pe_h.k_pe_j),
    o_h = W_UV_h (sum_j P_hj c_j)."""
    model = load_model(folder)
    c, w = model.cfg, model.w
    ids = _check_ids(c, ids)
    cache_c = [np.zeros((0, c.kv_lora_rank)) for _ in range(c.n_layers)]
    cache_pe = [np.zeros((0, c.rope)) for _ in range(c.n_layers)]
    absorbed = [_w_uk_uv(model, i) for i in range(c.n_layers)]
    out = []
    for pos, tok in enumerate(ids):
        x = w["model.embed_tokens.weight"][[tok]]                   # [1, H]
        for i in range(c.n_layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, w[p + "input_layernorm.weight"], c.eps)
            q_nope, q_pe, lat, k_pe = _q_and_latent(model, i, h, np.array([pos]))
            cache_c[i] = np.concatenate([cache_c[i], lat])          # [pos+1, kv_lora]
            cache_pe[i] = np.concatenate([cache_pe[i], k_pe])       # [pos+1, rope]
            w_uk, w_uv = absorbed[i]
            q_lat = np.einsum("hd,hdc->hc", q_nope[0], w_uk)        # [h, kv_lora]
            scores = (q_lat @ cache_c[i].T + q_pe[0] @ cache_pe[i].T) * c.scale  # [h, pos+1]
            o_lat = softmax(scores) @ cache_c[i]                    # [h, kv_lora]
            o = np.einsum("hvc,hc->hv", w_uv, o_lat).reshape(1, c.n_heads * c.v_dim)
            x = x + o @ w[p + "self_attn.o_proj.weight"].T
            x = x + ffn(model, i, rms_norm(x, w[p + "post_attention_layernorm.weight"], c.eps))
        x = rms_norm(x, w["model.norm.weight"], c.eps)
        out.append((x @ w["lm_head.weight"].T)[0])
    return np.stack(out)


def _check_ids(c, ids):
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError("empty token sequence")
    if ids.min() < 0 or ids.max() >= c.vocab:
        raise ValueError(f"token id out of range [0, {c.vocab}): {ids.min()}..{ids.max()}")
    return ids


def top2_margin(row):
    top = np.sort(row)[-2:]
    return float(top[1] - top[0])


def greedy_with_margins(folder, ids, n, trace=None):
    ids = list(int(i) for i in ids)
    gen, margins = [], []
    for _ in range(n):
        logits = forward(folder, ids + gen, trace)[-1]
        gen.append(int(np.argmax(logits)))
        margins.append(top2_margin(logits))
    return gen, margins


def greedy(folder, ids, n):
    return greedy_with_margins(folder, ids, n)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("ids", type=int, nargs="+")
    ap.add_argument("--greedy", type=int, default=0, help="also generate N tokens greedily")
    args = ap.parse_args()
    logits = forward(args.folder, args.ids)
    print(json.dumps({"argmax": [int(i) for i in logits.argmax(axis=1)],
                      "last_logits_head": [float(v) for v in logits[-1, :8]]}))
    if args.greedy:
        print(json.dumps({"greedy": greedy(args.folder, args.ids, args.greedy)}))


if __name__ == "__main__":
    main()
