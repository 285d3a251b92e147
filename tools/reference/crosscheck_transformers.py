"""Cross-check the float64 oracle against transformers' native DeepseekV2ForCausalLM.

For every golden case that transformers can express, load tests/data/golden/<case>/model with
AutoModelForCausalLM (float32, then float64; on the CPU and, when present, the GPU), run the golden
prompt followed by its greedy continuation, and compare the logits with oracle.forward:
relative L2 over all logits, max abs diff, argmax agreement per position. The derived constants
(softmax scale, RoPE inv_freq, attention_factor) are compared too; if transformers' softmax scale
differs from the oracle's, the run is repeated with the oracle's scale patched in to isolate that.

Needs torch and transformers (the GPU machine's python3). Usage:
  python3 tools/reference/crosscheck_transformers.py [--golden DIR] [--out FILE.md]
"""

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import oracle  # noqa: E402

DEFAULT_GOLDEN = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data", "golden"))


def not_expressible(cfg):
    """Reasons why transformers' native class cannot reproduce this config (empty list: it can)."""
    why = []
    if cfg.get("model_type") != "deepseek_v2":
        why.append(f"model_type {cfg.get('model_type')} has no native transformers class")
    if cfg.get("moe_layer_freq", 1) != 1:
        why.append("transformers ignores moe_layer_freq")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        why.append("transformers needs hidden_size % num_attention_heads == 0")
    if cfg.get("norm_topk_prob") and cfg.get("num_experts_per_tok", 1) > 1:
        import inspect
        from transformers.models.deepseek_v2 import modeling_deepseek_v2 as m
        if "norm_topk_prob" not in inspect.getsource(m):
            why.append("this transformers release ignores norm_topk_prob")
    return why


def load(folder, dtype, device):
    import torch
    from transformers import AutoModelForCausalLM
    kwargs = dict(attn_implementation="eager", output_loading_info=True)
    attempts = [dict(dtype=dtype, experts_implementation="eager"), dict(dtype=dtype), dict(torch_dtype=dtype)]
    last = None
    for extra in attempts:
        try:
            model, info = AutoModelForCausalLM.from_pretrained(folder, **kwargs, **extra)
            break
        except TypeError as e:  # an argument this release does not know
            last = e
    else:
        raise last
    model = model.to(device).eval()
    # missing/unexpected/mismatched keys would mean randomly initialized weights: report them
    issues = {k: sorted(map(str, v))[:4] for k, v in info.items() if v}
    return model, issues


def run(model, ids, device):
    import torch
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device))
    return out.logits[0].double().cpu().numpy()


def constants(model, c):
    attn = model.model.layers[0].self_attn
    rot = model.model.rotary_emb
    inv = rot.inv_freq.double().cpu().numpy()
    return {
        "scale_tf": float(attn.scaling), "scale_oracle": c.scale,
        "attention_factor_tf": float(rot.attention_scaling), "attention_factor_oracle": c.attention_factor,
        "inv_freq_max_rel_diff": float(np.max(np.abs(inv - c.inv_freq) / c.inv_freq)) if inv.shape == c.inv_freq.shape
        else f"shape {inv.shape} vs {c.inv_freq.shape}",
    }


def compare(got, ref):
    return {"rel_l2": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
            "max_abs": float(np.max(np.abs(got - ref))),
            "argmax_agree": f"{int(np.sum(got.argmax(1) == ref.argmax(1)))}/{ref.shape[0]}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", default=DEFAULT_GOLDEN)
    ap.add_argument("--out", help="write the markdown table here too")
    args = ap.parse_args()

    import torch
    import transformers
    try:  # exact fp32 products on the GPU (no TF32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except Exception:
        pass
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    env = (f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}, "
           f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(env, flush=True)

    rows = []
    for case in sorted(d for d in os.listdir(args.golden) if os.path.isdir(os.path.join(args.golden, d))):
        folder = os.path.join(args.golden, case, "model")
        with open(os.path.join(args.golden, case, "golden.json")) as f:
            golden = json.load(f)
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        why = not_expressible(cfg)
        if why:
            rows.append({"case": case, "skipped": "; ".join(why)})
            print(case, "skipped:", why, flush=True)
            continue
        ids = golden["greedy"]["prompt_ids"] + golden["greedy"]["generated_ids"]
        model_o = oracle.load_model(folder)
        ref = oracle.forward(model_o, ids)
        for device in devices:
            for dtype in (torch.float32, torch.float64):
                row = {"case": case, "device": device, "dtype": str(dtype).replace("torch.", ""), "T": len(ids)}
                t0 = time.time()
                try:
                    model, issues = load(folder, dtype, device)
                    if issues:
                        row["loading_issues"] = issues
                    row.update(constants(model, model_o.cfg))
                    row.update(compare(run(model, ids, device), ref))
                    if abs(row["scale_tf"] - row["scale_oracle"]) > 1e-6 * row["scale_oracle"]:
                        for layer in model.model.layers:
                            layer.self_attn.scaling = model_o.cfg.scale
                        row["patched_scale"] = compare(run(model, ids, device), ref)
                    del model
                except Exception as e:  # record and go on: one call must report everything
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    traceback.print_exc()
                row["seconds"] = round(time.time() - t0, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)

    lines = [f"Environment: {env}", "",
             "| case | device | dtype | positions | rel L2 | max abs | argmax agree | scale tf / oracle | "
             "attention_factor tf / oracle | inv_freq max rel diff | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | - | - | - | - | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        if "rel_l2" not in r:
            lines.append(f"| {r['case']} | {r['device']} | {r['dtype']} | {r['T']} | - | - | - | - | - | - | "
                         f"error: {r.get('error', '')} |")
            continue
        note = f"loading: {r['loading_issues']} " if "loading_issues" in r else ""
        if "patched_scale" in r:
            p = r["patched_scale"]
            note += f"with the oracle's scale patched in: rel L2 {p['rel_l2']:.3e}, argmax {p['argmax_agree']}"
        lines.append(f"| {r['case']} | {r['device']} | {r['dtype']} | {r['T']} | {r['rel_l2']:.3e} | "
                     f"{r['max_abs']:.3e} | {r['argmax_agree']} | {r['scale_tf']:.10g} / {r['scale_oracle']:.10g} | "
                     f"{r['attention_factor_tf']:.10g} / {r['attention_factor_oracle']:.10g} | "
                     f"{r['inv_freq_max_rel_diff'] if isinstance(r['inv_freq_max_rel_diff'], str) else format(r['inv_freq_max_rel_diff'], '.2e')} | {note} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
            f.write("\n```\n" + "\n".join(json.dumps(r) for r in rows) + "\n```\n")


if __name__ == "__main__":
    main()
