#!/usr/bin/env python3
"""Trains the dsv2 demo model (a ~9M-parameter DeepSeek-V2) and writes the shipped model folder and
the engine's golden files.

Needs PyTorch and Hugging Face `tokenizers` (the GPU machine's python3 has both) and the corpus made
by prepare_data.py. Steps:
  1. byte-level BPE tokenizer (tokenizers library) with DeepSeek-V3's Split pre-tokenizer rules
  2. model training (bf16 autocast, AdamW, cosine schedule); the checkpoint with the best held-out
     loss is kept
  3. export: bf16 model.safetensors with the original per-expert tensor names, config.json,
     generation_config.json, tokenizer.json, tokenizer_config.json, README.md
  4. golden files from the exported (bf16-rounded) weights: prompt logits from a float64 reference,
     a 32-token greedy continuation, and the validation perplexity of val.txt (protocol below)
  5. cross-checks: float32 model vs float64 reference, and transformers' DeepseekV2ForCausalLM

Output: OUT/dsv2-demo/ (the model folder), OUT/golden/ (golden.json, logits.npy, val.txt,
val_ids.json), OUT/samples.txt.
"""

import argparse
import hashlib
import json
import math
import os
import re
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from model import Cfg, DeepseekV2, reference_logits  # noqa: E402

PPL_WINDOW = 256

# The golden prompt is the candidate whose 32 greedy tokens contain no EOS and whose smallest
# top-1/top-2 logit margin is largest (so engines in lower precision reproduce the same tokens).
GOLDEN_PROMPTS = [
    "The hacker sat down at the terminal and",
    "A good programmer is",
    "And the king said unto",
    "The program crashed because",
    "Then the people went out into the city, and",
    "Every hacker knows that",
    "The old man looked at the sky and said",
    "In the days of the first computers,",
]
SAMPLE_PROMPTS = [
    "The hacker sat down at the terminal and",
    "A good programmer is",
    "In the beginning",
    "POLITICS, n.",
    "The meaning of life is",
    "When the sun went down,",
]
CHAT_SAMPLES = [
    [{"role": "user", "content": "What is a cynic?"}],
    [{"role": "user", "content": "What does \"kludge\" mean in hacker slang?"}],
    [{"role": "user", "content": "Who are you?"}],
]


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def make_config(args, n_tokens):
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": args.aux_alpha,
        "bos_token_id": n_tokens - 2,
        "eos_token_id": n_tokens - 1,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 256,
        "initializer_range": 0.02,
        "intermediate_size": 768,
        "kv_lora_rank": 64,
        "max_position_embeddings": 2048,
        "moe_intermediate_size": 96,
        "moe_layer_freq": 1,
        "n_group": 4,
        "n_routed_experts": 16,
        "n_shared_experts": 2,
        "norm_topk_prob": False,
        "num_attention_heads": 8,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 5,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "q_lora_rank": 128,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 4.0,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 512,
            "type": "yarn",
        },
        "rope_theta": 10000.0,
        "routed_scaling_factor": 2.0,
        "scoring_func": "softmax",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 2,
        "topk_method": "group_limited_greedy",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "v_head_dim": 32,
        "vocab_size": common.VOCAB_ROWS,
    }


# ------------------------------------------------------------------ safetensors (bf16) writer/reader

def save_safetensors(tensors, path):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.bfloat16).contiguous()
        b = t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors_f64(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, m in header.items():
        if name == "__metadata__":
            continue
        assert m["dtype"] == "BF16", (name, m["dtype"])
        a, b = m["data_offsets"]
        bits = np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16
        out[name] = torch.from_numpy(bits.view(np.float32).astype(np.float64).reshape(m["shape"]))
    return out


# ------------------------------------------------------------------ tokenizer

def train_tokenizer(texts, splits, out_dir):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    rules = []
    for sp in splits:
        beh = sp["behavior"].lower()
        rules.append(pre_tokenizers.Split(Regex(sp["pattern"]["Regex"]), behavior=beh, invert=sp["invert"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(rules + [pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=common.BPE_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator((t.replace(common.BOS, "").replace(common.EOS, "") for t in texts), trainer)
    n_bpe = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(common.BOS, special=True, normalized=False),
                            AddedToken(common.EOS, special=True, normalized=False)])
    assert tok.token_to_id(common.BOS) == n_bpe and tok.token_to_id(common.EOS) == n_bpe + 1
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    # The saved pre-tokenizer must carry DeepSeek-V3's Split rules unchanged.
    saved = json.load(open(path, encoding="utf-8"))["pre_tokenizer"]["pretokenizers"]
    for a, b in zip(saved, splits):
        assert a["pattern"] == b["pattern"] and a["behavior"] == b["behavior"] and a["invert"] == b["invert"], (a, b)
    return Tokenizer.from_file(path), n_bpe + 2


def tokenizer_config():
    def tokspec(s):
        return {"__type": "AddedToken", "content": s, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": tokspec(common.BOS),
        "eos_token": tokspec(common.EOS),
        "pad_token": tokspec(common.EOS),
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 2048,
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": common.CHAT_TEMPLATE,
    }


# ------------------------------------------------------------------ evaluation helpers

def ppl_windows(ids, window=PPL_WINDOW):
    """Consecutive non-overlapping windows; a final shorter window is kept if it has >= 2 tokens."""
    return [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) >= 2]


@torch.no_grad()
def perplexity_fp32(model, ids, device):
    total, count, per = 0.0, 0, []
    for w in ppl_windows(ids):
        x = torch.tensor([w], device=device)
        logits, _ = model(x)
        nll = F.cross_entropy(logits[0, :-1].double(), x[0, 1:], reduction="sum").item()
        per.append(nll)
        total += nll
        count += len(w) - 1
    return total, count, per


@torch.no_grad()
def perplexity_fp64(cfg, W, ids):
    total, count = 0.0, 0
    for w in ppl_windows(ids):
        logits = reference_logits(cfg, W, w)
        y = torch.tensor(w[1:], device=logits.device)
        total += F.cross_entropy(logits[:-1], y, reduction="sum").item()
        count += len(w) - 1
    return total, count


@torch.no_grad()
def generate(model, ids, n, device, n_tokens, eos, temperature=0.0, top_p=1.0, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = list(ids)
    for _ in range(n):
        logits, _ = model(torch.tensor([out], device=device))
        row = logits[0, -1, :n_tokens].double().cpu()  # padding rows are never sampled
        if temperature <= 0:
            nxt = int(row.argmax())
        else:
            p = (row / temperature).softmax(-1)
            sp, si = p.sort(descending=True)
            keep = (sp.cumsum(0) - sp) < top_p
            sp = sp * keep
            nxt = int(si[torch.multinomial(sp / sp.sum(), 1, generator=g)])
        out.append(nxt)
        if nxt == eos:
            break
    return out[len(ids):]


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=".demo-data", help="folder written by prepare_data.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1, help="residual dropout while training")
    ap.add_argument("--aux-alpha", type=float, default=0.001)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    t_start = time.time()
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    model_dir = os.path.join(args.out, "dsv2-demo")
    golden_dir = os.path.join(args.out, "golden")
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(golden_dir, exist_ok=True)
    log("torch", torch.__version__, "device", dev, torch.cuda.get_device_name(0) if dev.type == "cuda" else "")

    # ---- data + tokenizer
    docs = [json.loads(line) for line in open(os.path.join(args.data, "corpus.jsonl"), encoding="utf-8")]
    splits = json.load(open(os.path.join(args.data, "pretokenizer.json"), encoding="utf-8"))["splits"]
    sources = json.load(open(os.path.join(args.data, "sources.json"), encoding="utf-8"))
    val_text = open(os.path.join(args.data, "val.txt"), encoding="utf-8").read()
    train_docs = [d for d in docs if d["split"] == "train"]
    tok, n_tokens = train_tokenizer([d["text"] for d in train_docs], splits, model_dir)
    bos, eos = n_tokens - 2, n_tokens - 1
    log(f"tokenizer: {n_tokens} tokens (BOS {bos}, EOS {eos})")

    def encode_docs(ds, rng):
        order = rng.permutation(len(ds))
        encs = tok.encode_batch([ds[i]["text"] for i in order], add_special_tokens=False)
        stream = []
        for i, e in zip(order, encs):
            stream += ([bos] + e.ids + [eos]) if ds[i]["kind"] == "text" else e.ids
        return torch.tensor(stream, dtype=torch.long)

    rng = np.random.default_rng(args.seed)
    train_stream = encode_docs(train_docs, rng).to(dev)
    heldout_stream = encode_docs([d for d in docs if d["split"] == "val"], rng).to(dev)
    log(f"train tokens {len(train_stream)}, held-out tokens {len(heldout_stream)}; "
        f"bytes/token {sum(len(d['text'].encode()) for d in train_docs) / len(train_stream):.2f}")

    # ---- model
    cfg_dict = make_config(args, n_tokens)
    cfg = Cfg(cfg_dict)
    model = DeepseekV2(cfg, dropout=args.dropout)
    model.init_weights(args.seed)
    model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    n_active = n_params - sum(p.numel() for n, p in model.named_parameters() if ".mlp.w_" in n) * (
        1 - cfg.num_experts_per_tok / cfg.n_routed_experts)
    log(f"parameters {n_params / 1e6:.2f}M (active per token {n_active / 1e6:.2f}M)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt_kw = {"fused": True} if dev.type == "cuda" else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95),
                            eps=1e-8, **opt_kw)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    T = args.seq
    offs = torch.arange(T + 1, device=dev)

    def batch(stream, starts):
        w = stream[starts[:, None].to(dev) + offs[None, :]]
        return w[:, :-1], w[:, 1:]

    n_eval = min(64, (len(heldout_stream) - 1) // (T + 1))
    eval_starts = torch.arange(n_eval) * (T + 1)

    @torch.no_grad()
    def heldout_loss():
        model.eval()
        tot = 0.0
        for i in range(0, n_eval, 16):
            x, y = batch(heldout_stream, eval_starts[i:i + 16])
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits, _ = model(x)
            tot += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        model.train()
        return tot / (n_eval * T)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))

    best = (float("inf"), -1, None)
    history = []
    t_train = time.time()
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(train_stream) - T - 1, (args.batch,), generator=gen)
        x, y = batch(train_stream, starts)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits, aux = model(x, aux_alpha=args.aux_alpha)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        total = loss + aux if aux is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            vl = heldout_loss()
            history.append({"step": step + 1, "train_loss": round(loss.item(), 4), "heldout_loss": round(vl, 4)})
            log(f"step {step + 1}: train {loss.item():.3f} aux {aux.item() if aux is not None else 0:.4f} "
                f"held-out {vl:.3f} (ppl {math.exp(vl):.1f}) lr {lr_at(step):.2e} "
                f"{(time.time() - t_train) / (step + 1) * 1000:.0f} ms/step")
            if vl < best[0]:
                best = (vl, step + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
    train_seconds = time.time() - t_train
    log(f"training done in {train_seconds:.0f}s; best held-out loss {best[0]:.4f} at step {best[1]}")
    model.load_state_dict(best[2])

    # ---- export (bf16) and reload the rounded weights
    tensors = model.export_tensors()
    st_path = os.path.join(model_dir, "model.safetensors")
    save_safetensors(tensors, st_path)
    W64 = {k: v.to(dev) for k, v in load_safetensors_f64(st_path).items()}
    assert set(W64) == set(tensors)
    model.load_exported({k: v.float() for k, v in W64.items()})
    model.eval()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    with open(os.path.join(model_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos, "eos_token_id": eos, "do_sample": True, "temperature": 0.3,
                   "top_p": 0.95}, f, indent=2)
        f.write("\n")
    with open(os.path.join(model_dir, "training_data_sources.json"), "w", encoding="utf-8") as f:
        json.dump(sources, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, indent=2, ensure_ascii=False)
        f.write("\n")

    # ---- golden: prompt logits (float64 reference from the bf16 weights), greedy continuation
    golden = None
    for prompt in GOLDEN_PROMPTS:
        ids = [bos] + tok.encode(prompt, add_special_tokens=False).ids
        seq, margins = list(ids), []
        for _ in range(32):
            row = reference_logits(cfg, W64, seq)[-1]
            top2 = torch.topk(row, 2).values
            margins.append(float(top2[0] - top2[1]))
            seq.append(int(row.argmax()))
        cont = seq[len(ids):]
        log(f"golden candidate {prompt!r}: {tok.decode(cont, skip_special_tokens=False)!r}, "
            f"min margin {min(margins):.4f}")
        if eos not in cont and max(cont) < n_tokens and (golden is None or min(margins) > min(golden[3])):
            golden = (prompt, ids, cont, margins)
    if golden is None:
        sys.exit("every golden prompt produced EOS within 32 greedy tokens")
    prompt, ids, cont, margins = golden
    log(f"golden prompt {prompt!r} (min margin {min(margins):.4f})")
    ref = reference_logits(cfg, W64, ids)                                          # float64 {T,V}
    with torch.no_grad():
        f32 = model(torch.tensor([ids], device=dev))[0][0].double()
    rel = ((f32 - ref).norm() / ref.norm()).item()
    log(f"fp32 model vs float64 reference on the prompt: relative L2 {rel:.2e}, max abs "
        f"{(f32 - ref).abs().max().item():.2e}")
    assert rel < 1e-4, rel
    np.save(os.path.join(golden_dir, "logits.npy"), ref.float().cpu().numpy())

    # ---- validation perplexity (protocol documented in golden.json and the README)
    val_ids = tok.encode(val_text, add_special_tokens=False).ids
    nll32, cnt, per_window = perplexity_fp32(model, val_ids, dev)
    nll64, cnt64 = perplexity_fp64(cfg, W64, val_ids)
    assert cnt == cnt64
    ppl32, ppl64 = math.exp(nll32 / cnt), math.exp(nll64 / cnt)
    log(f"val.txt: {len(val_text.encode())} bytes, {len(val_ids)} tokens, {len(ppl_windows(val_ids))} windows, "
        f"ppl fp32 {ppl32:.4f}, fp64 {ppl64:.4f}")
    with open(os.path.join(golden_dir, "val.txt"), "w", encoding="utf-8") as f:
        f.write(val_text)
    with open(os.path.join(golden_dir, "val_ids.json"), "w") as f:
        json.dump(val_ids, f)

    # ---- transformers cross-check (informational)
    hf_note = "not run"
    try:
        import transformers
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev).eval()
        with torch.no_grad():
            hl = hf(torch.tensor([ids], device=dev)).logits[0].double()
        hrel = ((hl - ref).norm() / ref.norm()).item()
        hf_note = f"transformers {transformers.__version__} DeepseekV2ForCausalLM fp32: relative L2 {hrel:.2e} vs the float64 reference"
        del hf
    except Exception as e:  # noqa: BLE001
        hf_note = f"transformers check failed: {type(e).__name__}: {e}"
    log(hf_note)
    tok_note = []
    try:
        from transformers import AutoTokenizer
        at = AutoTokenizer.from_pretrained(model_dir)
        enc = at("Hello world, it's 2024!")["input_ids"]
        ref_ids = [bos] + tok.encode("Hello world, it's 2024!", add_special_tokens=False).ids
        tok_note.append(f"AutoTokenizer ({type(at).__name__}) ids {enc} vs tokenizers+BOS {ref_ids}: "
                        f"{'same' if enc == ref_ids else 'DIFFERENT'}")
        chat = at.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        tok_note.append(f"apply_chat_template: {chat!r}")
    except Exception as e:  # noqa: BLE001
        tok_note.append(f"AutoTokenizer check failed: {type(e).__name__}: {e}")
    for n in tok_note:
        log(n)

    # ---- samples for a human check
    lines = []
    for p in SAMPLE_PROMPTS:
        pid = [bos] + tok.encode(p, add_special_tokens=False).ids
        for temp, seed in ((0.0, 0), (0.7, 1)):
            o = generate(model, pid, 60, dev, n_tokens, eos, temperature=temp, top_p=0.95, seed=seed)
            lines.append(f"[{'greedy' if temp == 0 else 'T=0.7'}] {p}|{tok.decode(o, skip_special_tokens=False)}")
    import jinja2
    tmpl = jinja2.Environment().from_string(common.CHAT_TEMPLATE)
    for msgs in CHAT_SAMPLES:
        text = tmpl.render(messages=msgs, bos_token=common.BOS, eos_token=common.EOS, add_generation_prompt=True)
        pid = tok.encode(text, add_special_tokens=False).ids
        assert pid[0] == bos
        for temp, seed in ((0.0, 0), (0.3, 2)):
            o = generate(model, pid, 80, dev, n_tokens, eos, temperature=temp, top_p=0.95, seed=seed)
            lines.append(f"[chat {'greedy' if temp == 0 else 'T=0.3'}] {msgs[0]['content']}|"
                         f"{tok.decode(o, skip_special_tokens=False)}")
    with open(os.path.join(args.out, "samples.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(lines) + "\n")
    for line in lines:
        print(line)

    # ---- golden.json
    val_sha = hashlib.sha256(val_text.encode()).hexdigest()
    ppl_block = {
        "file": "val.txt",
        "val_txt_sha256": val_sha,
        "ids_file": "val_ids.json",
        "add_bos": False,
        "window": PPL_WINDOW,
        "min_last_window": 2,
        "n_tokens": len(val_ids),
        "n_windows": len(ppl_windows(val_ids)),
        "n_predicted": cnt,
        "nll_sum_fp32": nll32,
        "nll_sum_fp64": nll64,
        "ppl": ppl32,
        "ppl_fp64": ppl64,
        "window_nll_fp32": per_window,
        "protocol": ("ids = tokenizer.encode(text) without BOS; split ids into consecutive non-overlapping "
                     "windows of 256 tokens (a final shorter window is kept if it has >= 2 tokens); each window "
                     "is evaluated independently from an empty cache at positions 0..len-1; the loss of a window "
                     "is the sum over j >= 1 of -log softmax(logits[j-1])[w[j]] over all vocab_size rows; "
                     "ppl = exp(total nll over all windows / total predicted tokens). 'ppl' uses the bf16 "
                     "weights upcast to float32 with float32 compute; 'ppl_fp64' the same weights in float64."),
    }
    golden_json = {
        "model": "models/dsv2-demo",
        "model_safetensors_sha256": hashlib.sha256(open(st_path, "rb").read()).hexdigest(),
        "prompt": prompt,
        "add_bos": True,
        "prompt_ids": ids,
        "logits_file": "logits.npy",
        "logits_shape": [len(ids), cfg.vocab_size],
        "logits_dtype": "float32",
        "logits_source": ("float64 forward pass (latent-cache/absorbed MLA, sparse routing) from the bf16 weights "
                          "of model.safetensors widened exactly, stored as float32; rows are positions of "
                          "prompt_ids, columns all vocab_size rows including padding"),
        "fp32_vs_reference_rel_l2": rel,
        "greedy": {
            "n": 32,
            "ids": cont,
            "text": tok.decode(cont, skip_special_tokens=False),
            "rule": "argmax over all vocab_size logits of the float64 reference at each step, starting from "
                    "prompt_ids (with BOS); 32 tokens, EOS not produced",
            "top1_top2_margins": margins,
        },
        "perplexity": ppl_block,
    }
    text = json.dumps(golden_json, indent=1, ensure_ascii=False)
    # Keep number lists on one line each.
    text = re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + ", ".join(
        x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(os.path.join(golden_dir, "golden.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")

    # ---- model README
    info = {
        "n_params": n_params, "n_active": n_active, "n_tokens": n_tokens, "train_tokens": len(train_stream),
        "heldout_tokens": len(heldout_stream), "best_step": best[1], "best_heldout": best[0],
        "train_seconds": train_seconds, "ppl32": ppl32, "ppl64": ppl64, "val_tokens": len(val_ids),
        "history": history, "args": vars(args), "hf_note": hf_note, "sources": sources,
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "total_seconds": time.time() - t_start,
        "samples": "\n".join(line for line in lines if line.startswith(("[greedy]", "[chat greedy]"))),
    }
    with open(os.path.join(args.out, "train_info.json"), "w") as f:
        json.dump({k: v for k, v in info.items() if k != "sources"}, f, indent=1, default=str)
    import readme
    with open(os.path.join(model_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme.model_readme(cfg_dict, info))
    log(f"all done in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
