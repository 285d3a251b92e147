"""Peer measurement: Hugging Face transformers' native DeepseekV2ForCausalLM with random bf16 weights of
the DeepSeek-V2-Lite shape on one GPU. Prints JSON lines like `dsv2 bench`:
  decode at batch 1 and 64 (128-token prompts, 64 new tokens, no early stop), and one 4096-token prefill.
Usage: python3 peer_transformers.py [--batches 1,64] [--prompt 128] [--gen 64] [--prefill 4096]"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--batches", default="1,64")
ap.add_argument("--prompt", type=int, default=128)
ap.add_argument("--gen", type=int, default=64)
ap.add_argument("--prefill", type=int, default=4096)
ap.add_argument("--layers", type=int, default=27)
args = ap.parse_args()

cfg = DeepseekV2Config(
    vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
    num_hidden_layers=args.layers, num_attention_heads=16, num_key_value_heads=16, n_shared_experts=2,
    n_routed_experts=64, routed_scaling_factor=1.0, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
    v_head_dim=128, qk_nope_head_dim=128, n_group=1, topk_group=1, num_experts_per_tok=6,
    first_k_dense_replace=1, norm_topk_prob=False, max_position_embeddings=163840, rms_norm_eps=1e-6,
    rope_theta=10000.0, bos_token_id=100000, eos_token_id=100001,
    rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                  "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707},
)
torch.manual_seed(0)
t0 = time.time()
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = DeepseekV2ForCausalLM(cfg)
model.eval()
torch.cuda.synchronize()
print(json.dumps({"peer": "transformers", "version": transformers.__version__, "torch": torch.__version__,
                  "gpu": torch.cuda.get_device_name(0), "init_s": time.time() - t0,
                  "params": sum(p.numel() for p in model.parameters())}), flush=True)


def ids(b, n):
    g = torch.Generator().manual_seed(b * 1000 + n)
    return torch.randint(2, 100000, (b, n), generator=g).cuda()


with torch.inference_mode():
    for b in [int(x) for x in args.batches.split(",")]:
        x = ids(b, args.prompt)
        mask = torch.ones_like(x)
        model.generate(x, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        t0 = time.time()
        out = model.generate(x, attention_mask=mask, max_new_tokens=args.gen, min_new_tokens=args.gen,
                             do_sample=False)
        torch.cuda.synchronize()
        dt = time.time() - t0
        new = out.shape[1] - args.prompt
        print(json.dumps({"peer": "transformers", "bench": "generate", "batch": b, "prompt": args.prompt,
                          "gen": new, "seconds": dt, "output_tok_s": b * new / dt}), flush=True)
    if args.prefill > 0:
        x = ids(1, args.prefill)
        model(ids(1, 256))
        torch.cuda.synchronize()
        t0 = time.time()
        model(x, use_cache=False, logits_to_keep=1)
        torch.cuda.synchronize()
        dt = time.time() - t0
        print(json.dumps({"peer": "transformers", "bench": "prefill", "prompt": args.prefill,
                          "prefill_tok_s": args.prefill / dt}), flush=True)
