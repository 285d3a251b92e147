"""Deterministic writer of the golden test data in tests/data/golden/ (run with /usr/bin/python3).

Every case is a tiny DeepSeek-V2-architecture model with random weights (fixed seeds), written as a
real Hugging Face folder, plus the float64 oracle's (oracle.py) logits and greedy continuation.

Layout
------
tests/data/golden/<case>/
  model/config.json               every field of the published configs (architectures, model_type, ...)
  model/generation_config.json    {"bos_token_id", "eos_token_id"}
  model/model.safetensors         or model-0000k-of-0000n.safetensors + model.safetensors.index.json;
                                  original per-expert tensor names (mlp.experts.{e}.gate_proj.weight ...)
  logits.npy                      NumPy .npy float32 [len(prompt_ids), vocab_size]; row t = logits after
                                  token t of prompt_ids (no BOS is added: prompt_ids are fed as they are)
  golden.json:
    {"case": str,
     "prompt_ids": [int],                  the ids whose logits logits.npy holds
     "logits_npy": "logits.npy",           relative to the case folder
     "greedy": {"prompt_ids": [int], "max_tokens": N,
                "generated_ids": [int],    argmax over the whole vocabulary, N steps, no early stop
                                           (the bos and eos ids never occur in them)
                "min_margin": float},      smallest top1 - top2 logit gap along the greedy path (fp64)
     "min_router_logit_gap": float,        smallest router-logit gap that decided an expert or group
                                           selection, over the prompt and the greedy path (fp64);
                                           an engine whose router logits err by more may pick other experts
     "softmax_scale": float, "attention_factor": float}   the case's derived constants, for debugging

tests/data/golden/ops.json (small reference values for unit tests):
  {"yarn": [{"name", "dim", "base", "factor", "original_max_position_embeddings", "beta_fast",
             "beta_slow", "mscale", "mscale_all_dim",
             "low", "high",                 correction range (after floor/ceil and clamping)
             "inv_freq": [dim/2 floats],
             "attention_factor": float,     multiplies cos and sin
             "qk_head_dim": int, "softmax_scale": float}],  (nope+rope)^-0.5 * m(mscale_all_dim)^2
   "rope": [{"yarn": name of the yarn entry whose inv_freq/attention_factor it uses,
             "input": [dim floats],         one q_pe / k_pe vector, pairs (x[2i], x[2i+1])
             "positions": [int],
             "output": [[dim floats]],      one row per position, de-interleaved layout:
                                            out[i] = x[2i] cos - x[2i+1] sin (cos, sin scaled
                                            by attention_factor),
                                            out[i+dim/2] = (x[2i+1] cos + x[2i] sin),
             "output_interleaved": [[dim floats]]}],  the same values with each pair kept in place:
                                            out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = ...
   "rope_default": {"dim", "base", "inv_freq", "qk_head_dim", "softmax_scale", "input", "positions",
                    "output"},              no rope_scaling: plain base^(-2i/dim), factor 1, no m^2
   "router": [{"name", "n_routed_experts", "num_experts_per_tok", "topk_method", "n_group",
               "topk_group", "norm_topk_prob", "routed_scaling_factor",
               "logits": [[n_routed floats]],   router logits (x W_gate^T), one row per token
               "expert_ids": [[k ints]],         selected experts, in descending weight order
               "weights": [[k floats]]}]}        the weights for those experts, same order

Usage: make_golden.py [--out DIR] [--case NAME ...]      (default: all cases into tests/data/golden)
       make_golden.py --search CASE [--tries N]          print candidate seeds and their metrics
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import oracle  # noqa: E402
import safetensors_np as st  # noqa: E402

DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data", "golden"))

# Base config: the fields of the published DeepSeek-V2(-Lite) config.json, tiny shapes.
BASE = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "kv_lora_rank": 32,
    "max_position_embeddings": 640,
    "model_type": "deepseek_v2",
    "moe_intermediate_size": 16,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 8,
    "n_shared_experts": 2,
    "norm_topk_prob": False,
    "num_attention_heads": 4,
    "num_experts_per_tok": 3,
    "num_hidden_layers": 3,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "q_lora_rank": None,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000,
    "routed_scaling_factor": 1.0,
    "scoring_func": "softmax",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "v_head_dim": 16,
    "vocab_size": 256,
}

# name -> (config overrides, seed, prompt length, greedy tokens, shards, dtype rule)
CASES = {
    # V2-Lite shape family: plain q_proj, greedy routing, YaRN as published (factor 40,
    # mscale == mscale_all_dim) with original_max_position_embeddings 16 < prompt length.
    "lite": dict(
        config={"rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 16,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
                "max_position_embeddings": 640},
        seed=14, prompt_len=48, greedy=16, shards=1, dtype="bf16"),
    # V2 (236B) family: q_lora, group-limited routing with scaling, v_head_dim != nope,
    # YaRN with mscale != mscale_all_dim (attention_factor != 1), rope_theta chosen so the YaRN
    # ramp has a fractional step at this tiny rope dim; sharded in 3 files.
    "v2": dict(
        config={"q_lora_rank": 24, "v_head_dim": 12, "moe_intermediate_size": 16, "n_routed_experts": 16,
                "n_shared_experts": 1, "num_experts_per_tok": 3, "topk_method": "group_limited_greedy",
                "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "rope_theta": 500,
                "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 32,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.707},
                "max_position_embeddings": 512},
        seed=36, prompt_len=56, greedy=20, shards=3, dtype="bf16"),
    # Early V2 naming, no rope scaling, renormalized top-k (routed_scaling_factor must then be
    # ignored), MoE only on even layers (moe_layer_freq 2, first_k_dense_replace 0).
    "norope": dict(
        config={"architectures": ["DeepseekForCausalLM"], "model_type": "deepseek", "num_hidden_layers": 3,
                "q_lora_rank": 32, "first_k_dense_replace": 0, "moe_layer_freq": 2, "norm_topk_prob": True,
                "num_experts_per_tok": 2, "routed_scaling_factor": 3.0, "max_position_embeddings": 128,
                "rope_scaling": None},
        seed=14, prompt_len=32, greedy=16, shards=1, dtype="bf16"),
    # dtype acceptance: matrices stored F16, norm weights and the embeddings stored F32.
    "f16": dict(
        config={"num_hidden_layers": 2, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
                "max_position_embeddings": 128, "torch_dtype": "float16"},
        seed=2, prompt_len=24, greedy=16, shards=1, dtype="f16+f32"),
}

# Acceptance rules for a seed (searched with --search, then fixed in CASES).
MIN_MARGIN = 0.05
MIN_DISTINCT = 8
MIN_ROUTER_GAP = 0.01


def case_config(name):
    cfg = dict(BASE)
    cfg.update(CASES[name]["config"])
    return dict(sorted(cfg.items()))


def _store(name, values, rule):
    """float64 values -> safetensors Tensor under the case's dtype rule."""
    if rule == "bf16":
        return st.Tensor("BF16", st.bf16_bits(values))
    if rule == "f16+f32":
        if values.ndim == 1 or name == "model.embed_tokens.weight":
            return st.Tensor("F32", values.astype(np.float32))
        return st.Tensor("F16", values.astype(np.float16))
    raise ValueError(f"unknown dtype rule {rule}")


def make_weights(cfg, seed, rule):
    """Random weights with scales that keep activations O(1) and logits well spread."""
    c = oracle.Config(cfg, "generated config")
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in sorted(oracle.expected_shapes(c).items()):
        if len(shape) == 1:                                    # every norm weight
            v = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            v = rng.standard_normal(shape)
        else:
            gain = 1.0
            if name == "lm_head.weight":
                gain = 3.0
            elif name.endswith("mlp.gate.weight"):             # router: spread logits, clear choices
                gain = 2.5
            v = gain * rng.standard_normal(shape) / math.sqrt(shape[1])
        out[name] = _store(name, v, rule)
    return out


def write_model(name, folder, seed=None):
    spec = CASES[name]
    cfg = case_config(name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, f, indent=2)
        f.write("\n")
    tensors = make_weights(cfg, spec["seed"] if seed is None else seed, spec["dtype"])
    meta = {"format": "pt"}
    if spec["shards"] == 1:
        st.save_file(tensors, os.path.join(folder, "model.safetensors"), meta)
    else:
        st.save_sharded(tensors, folder, spec["shards"], meta)
    return cfg


def prompt_ids(name, seed, cfg):
    rng = np.random.default_rng(10_000 + seed)
    n = CASES[name]["prompt_len"]
    # BOS first, then ordinary ids (never BOS/EOS)
    return [cfg["bos_token_id"]] + [int(i) for i in rng.integers(2, cfg["vocab_size"], n - 1)]


def evaluate(name, model_dir, seed=None):
    spec = CASES[name]
    seed = spec["seed"] if seed is None else seed
    cfg = case_config(name)
    model = oracle.Model(model_dir)                            # reads back what was written
    ids = prompt_ids(name, seed, cfg)
    gaps = []
    logits = oracle.forward(model, ids, gaps)
    gen, margins = oracle.greedy_with_margins(model, ids, spec["greedy"], gaps)
    return {"ids": ids, "logits": logits, "generated": gen, "min_margin": min(margins),
            "min_router_gap": min(gaps) if gaps else None, "distinct": len(set(gen)),
            "eos_free": not {cfg["eos_token_id"], cfg["bos_token_id"]} & set(gen), "model": model}


def _round(x):
    return None if x is None else float(f"{x:.6g}")


def write_case(name, out_root):
    case_dir = os.path.join(out_root, name)
    if os.path.exists(case_dir):
        shutil.rmtree(case_dir)
    model_dir = os.path.join(case_dir, "model")
    write_model(name, model_dir)
    r = evaluate(name, model_dir)
    problems = []
    if r["min_margin"] < MIN_MARGIN:
        problems.append(f"min_margin {r['min_margin']:.4g} < {MIN_MARGIN}")
    if r["distinct"] < MIN_DISTINCT:
        problems.append(f"only {r['distinct']} distinct greedy tokens")
    if r["min_router_gap"] is not None and r["min_router_gap"] < MIN_ROUTER_GAP:
        problems.append(f"min router gap {r['min_router_gap']:.4g} < {MIN_ROUTER_GAP}")
    if not r["eos_free"]:
        problems.append("bos or eos in the greedy continuation")
    if problems:
        raise SystemExit(f"case {name}, seed {CASES[name]['seed']}: {'; '.join(problems)} "
                         f"(pick another seed with --search {name})")
    np.save(os.path.join(case_dir, "logits.npy"), r["logits"].astype(np.float32))
    c = r["model"].cfg
    golden = {
        "case": name,
        "prompt_ids": r["ids"],
        "logits_npy": "logits.npy",
        "greedy": {"prompt_ids": r["ids"], "max_tokens": CASES[name]["greedy"],
                   "generated_ids": r["generated"], "min_margin": _round(r["min_margin"])},
        "min_router_logit_gap": _round(r["min_router_gap"]),
        "softmax_scale": c.scale,
        "attention_factor": c.attention_factor,
    }
    with open(os.path.join(case_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, fn)) for d, _, fns in os.walk(case_dir) for fn in fns)
    print(f"{name}: {len(r['ids'])} prompt ids, greedy {r['generated']}, min_margin {r['min_margin']:.4f}, "
          f"min router gap {r['min_router_gap']}, {size} bytes", file=sys.stderr)


def search(name, tries):
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(tries):
            d = os.path.join(tmp, str(seed))
            write_model(name, d, seed)
            r = evaluate(name, d, seed)
            ok = (r["min_margin"] >= MIN_MARGIN and r["distinct"] >= MIN_DISTINCT and r["eos_free"]
                  and r["min_router_gap"] >= MIN_ROUTER_GAP)
            print(f"seed {seed}: min_margin {r['min_margin']:.4f} distinct {r['distinct']} "
                  f"eos_free {r['eos_free']} router_gap {r['min_router_gap']} {'OK' if ok else ''}")
            shutil.rmtree(d)


# ----------------------------------------------------------------------------- ops.json

def _yarn_entry(name, dim, base, factor, original, beta_fast, beta_slow, mscale, mscale_all_dim, qk_dim):
    y = {"factor": float(factor), "original_max_position_embeddings": original, "beta_fast": float(beta_fast),
         "beta_slow": float(beta_slow), "mscale": float(mscale), "mscale_all_dim": float(mscale_all_dim)}
    inv_freq, af = oracle.rope_inv_freq(dim, float(base), y)
    low, high = oracle.yarn_correction_range(dim, float(base), beta_fast, beta_slow, original)
    return {"name": name, "dim": dim, "base": base, "factor": factor, "original_max_position_embeddings": original,
            "beta_fast": beta_fast, "beta_slow": beta_slow, "mscale": mscale, "mscale_all_dim": mscale_all_dim,
            "low": low, "high": high, "inv_freq": [float(v) for v in inv_freq], "attention_factor": af,
            "qk_head_dim": qk_dim, "softmax_scale": oracle.softmax_scale(qk_dim, y)}, inv_freq, af


def _router_entry(name, logits, k, method, n_group, topk_group, norm, rsf):
    raw = {"hidden_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1, "kv_lora_rank": 1,
           "qk_nope_head_dim": 1, "qk_rope_head_dim": 2, "v_head_dim": 1, "vocab_size": 1, "rms_norm_eps": 1e-6,
           "model_type": "deepseek_v2", "n_routed_experts": logits.shape[1], "moe_intermediate_size": 1,
           "num_experts_per_tok": k, "topk_method": method, "n_group": n_group, "topk_group": topk_group,
           "norm_topk_prob": norm, "routed_scaling_factor": rsf}
    c = oracle.Config(raw, "router case")
    ids, w = oracle.route(c, logits)
    return {"name": name, "n_routed_experts": logits.shape[1], "num_experts_per_tok": k, "topk_method": method,
            "n_group": n_group, "topk_group": topk_group, "norm_topk_prob": norm, "routed_scaling_factor": rsf,
            "logits": [[float(v) for v in row] for row in logits],
            "expert_ids": [[int(i) for i in row] for row in ids],
            "weights": [[float(v) for v in row] for row in w]}, ids


def write_ops(out_root):
    published, inv_pub, af_pub = _yarn_entry("published", 64, 10000, 40, 4096, 32, 1, 0.707, 0.707, 192)
    assert published["softmax_scale"] == 0.11472138679292611, published["softmax_scale"]
    assert (published["low"], published["high"]) == (10, 23)
    differs, inv_d, af_d = _yarn_entry("mscale_differs", 64, 10000, 40, 4096, 32, 1, 1.0, 0.707, 192)
    small, _, _ = _yarn_entry("small_dim", 8, 500, 16, 32, 32, 1, 1.0, 0.707, 24)

    rng = np.random.default_rng(20240507)
    x = rng.standard_normal(64)
    positions = [0, 1, 2, 17, 1000, 4095, 5000, 163839]
    rope = []
    for yname, inv, af in (("published", inv_pub, af_pub), ("mscale_differs", inv_d, af_d)):
        cos, sin = oracle.rope_cos_sin(inv, af, positions)
        outs = oracle.apply_rope(x[None, :], cos, sin)
        inter = np.empty_like(outs)                                  # same values, pairs kept in place
        inter[:, 0::2], inter[:, 1::2] = outs[:, :32], outs[:, 32:]
        rope.append({"yarn": yname, "input": [float(v) for v in x], "positions": positions,
                     "output": [[float(v) for v in row] for row in outs],
                     "output_interleaved": [[float(v) for v in row] for row in inter]})
    inv_default, af_default = oracle.rope_inv_freq(64, 10000.0, None)
    cos, sin = oracle.rope_cos_sin(inv_default, af_default, positions)
    rope_default = {"dim": 64, "base": 10000, "inv_freq": [float(v) for v in inv_default],
                    "qk_head_dim": 192, "softmax_scale": oracle.softmax_scale(192, None),
                    "input": [float(v) for v in x], "positions": positions,
                    "output": [[float(v) for v in row] for row in oracle.apply_rope(x[None, :], cos, sin)]}

    router = []
    logits = 1.5 * rng.standard_normal((4, 16))
    router.append(_router_entry("greedy", logits, 4, "greedy", 1, 1, False, 1.0)[0])
    # group-limited: take token rows where dropping groups changes the choice vs plain greedy
    rows = []
    while len(rows) < 4:
        row = 1.5 * rng.standard_normal((1, 16))
        g = _router_entry("", row, 4, "greedy", 1, 1, False, 1.0)[1]
        gl = _router_entry("", row, 4, "group_limited_greedy", 4, 2, False, 2.5)[1]
        if sorted(g[0]) != sorted(gl[0]):
            rows.append(row[0])
    router.append(_router_entry("group_limited_greedy", np.array(rows), 4, "group_limited_greedy", 4, 2,
                                False, 2.5)[0])
    router.append(_router_entry("norm_topk_prob", 1.5 * rng.standard_normal((4, 16)), 4, "greedy", 1, 1,
                                True, 2.5)[0])
    router.append(_router_entry("norm_topk_prob_group_limited", 1.5 * rng.standard_normal((4, 16)), 3,
                                "group_limited_greedy", 4, 2, True, 16.0)[0])
    ops = {"yarn": [published, differs, small], "rope": rope, "rope_default": rope_default, "router": router}
    with open(os.path.join(out_root, "ops.json"), "w") as f:
        json.dump(ops, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--case", action="append", choices=sorted(CASES))
    ap.add_argument("--no-ops", action="store_true", help="do not write ops.json")
    ap.add_argument("--search", choices=sorted(CASES))
    ap.add_argument("--tries", type=int, default=20)
    args = ap.parse_args()
    if args.search:
        search(args.search, args.tries)
        return
    os.makedirs(args.out, exist_ok=True)
    for name in args.case or list(CASES):
        write_case(name, args.out)
    if not args.no_ops:
        write_ops(args.out)


if __name__ == "__main__":
    main()
