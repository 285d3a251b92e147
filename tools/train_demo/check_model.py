#!/usr/bin/env python3
"""Self-check of the demo model code, runnable on a CPU (Debian: apt-get install python3-torch).

With random weights in the demo's configuration (a smaller vocabulary), checks that
  1. the training model (decompressed MLA, dense-masked MoE) run in float64 equals the float64
     reference (absorbed MLA, sparse routing) of model.py, and
  2. after export to a model folder (bf16, original per-expert names), the project's independent NumPy
     oracle tools/reference/oracle.py gives the same logits as reference_logits on the same file,
  3. export_tensors/load_exported round-trip exactly.
Also checks a folder given with --folder (e.g. models/dsv2-demo) against the oracle and, if present,
its golden logits (tests/data/demo/logits.npy).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools/reference"))
import oracle  # noqa: E402
from model import Cfg, DeepseekV2, reference_logits  # noqa: E402
from train import load_safetensors_f64, make_config, save_safetensors  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_random():
    args = argparse.Namespace(aux_alpha=0.001)
    d = make_config(args, 402)
    d["vocab_size"] = 512
    cfg = Cfg(d)
    torch.manual_seed(0)
    m = DeepseekV2(cfg)
    m.init_weights(7)
    with torch.no_grad():  # larger weights than the init so routing and attention are far from uniform
        for n, p in m.named_parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    m = m.double().eval()
    ids = [400] + list(np.random.default_rng(1).integers(0, 400, 40))
    W = {k: v.double() for k, v in m.export_tensors().items()}
    with torch.no_grad():
        a = m(torch.tensor([ids]))[0][0]
        b = reference_logits(cfg, W, ids)
    r1 = rel(a, b)
    print(f"training model (float64) vs reference_logits: relative L2 {r1:.2e}")
    assert r1 < 1e-10, r1
    m2 = DeepseekV2(cfg).double()
    m2.load_exported(m.export_tensors())
    assert all(torch.equal(x.float(), y.float()) for x, y in zip(m.state_dict().values(), m2.state_dict().values()))
    with tempfile.TemporaryDirectory() as tmp:
        save_safetensors(m.export_tensors(), os.path.join(tmp, "model.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(d, f)
        W16 = load_safetensors_f64(os.path.join(tmp, "model.safetensors"))
        b16 = reference_logits(cfg, W16, ids).numpy()
        o = oracle.forward(tmp, ids)
        r2 = rel(o, b16)
        print(f"project oracle vs reference_logits on the exported bf16 folder: relative L2 {r2:.2e}")
        assert r2 < 1e-10, r2
        oa = oracle.forward_absorbed(tmp, ids)
        print(f"project oracle (absorbed) vs reference_logits: relative L2 {rel(oa, b16):.2e}")


def check_folder(folder, golden_dir):
    d = json.load(open(os.path.join(folder, "config.json")))
    cfg = Cfg(d)
    W = load_safetensors_f64(os.path.join(folder, "model.safetensors"))
    g = json.load(open(os.path.join(golden_dir, "golden.json")))
    ids = g["prompt_ids"]
    mine = reference_logits(cfg, W, ids).numpy()
    o = oracle.forward(folder, ids)
    gold = np.load(os.path.join(golden_dir, "logits.npy"))
    print(f"{folder}: oracle vs reference_logits {rel(o, mine):.2e}; golden logits.npy vs oracle {rel(gold, o):.2e}")
    assert rel(o, mine) < 1e-9 and rel(gold, o) < 1e-6
    cont = oracle.greedy(folder, ids, 32)
    print(f"oracle greedy == golden greedy: {list(cont) == g['greedy']['ids']}")
    assert list(cont) == g["greedy"]["ids"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder")
    ap.add_argument("--golden", default=os.path.join(REPO, "tests/data/demo"))
    a = ap.parse_args()
    if a.folder:
        check_folder(a.folder, a.golden)
    else:
        check_random()
