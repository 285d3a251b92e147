"""Writes the README.md of the shipped model folder from the training run's facts."""

import math


def _licence_line(pkg):
    text = pkg["copyright"]
    name = pkg["package"]
    if name == "bible-kjv-text":
        what = ("King James Version of the Bible (1611); Debian: \"The copyright for the King James Version text "
                "of the Bible is expired\"; the data file's legend allows unrestricted use and copying")
    elif name == "jargon-text":
        what = "The Jargon File 4.4.7, edited by Eric S. Raymond; \"This document (the Jargon File) is in the " \
               "public domain\""
    elif name == "dict-devil":
        what = "Ambrose Bierce, The Devil's Dictionary (1911); \"A Public Domain Text, Copyright Expired\""
    elif name == "bible-kjv":
        what = "the `bible` program used to decode bible-kjv-text's data file (GPL-2+; only its output is used)"
    else:
        what = text.splitlines()[0] if text else ""
    return f"| `{name}` | {pkg['version']} | {what} |"


def model_readme(cfg, info):
    a = info["args"]
    rs = cfg["rope_scaling"]
    hist = "\n".join(f"| {h['step']} | {h['train_loss']:.3f} | {h['heldout_loss']:.3f} | "
                     f"{math.exp(h['heldout_loss']):.1f} |" for h in info["history"])
    pk = "\n".join(_licence_line(p) for p in info["sources"]["packages"])
    docs = "\n".join(f"| {k} | {v['docs']} | {v['bytes']:,} |" for k, v in info["sources"]["documents"].items())
    samples = info.get("samples", "").strip()
    cmd = (f"python3 tools/train_demo/train.py --data .demo-data --out OUT --steps {a['steps']} "
           f"--batch {a['batch']} --seq {a['seq']} --lr {a['lr']} --dropout {a['dropout']} --seed {a['seed']}")
    return f"""# dsv2-demo: a tiny DeepSeek-V2 trained by the dsv2 project

A {info['n_params'] / 1e6:.1f}M-parameter model ({info['n_active'] / 1e6:.1f}M active per token) with the full
DeepSeek-V2 architecture, small enough to ship inside the repository and to run on any CPU. It writes
readable (if archaic and slightly unhinged) English and answers a few chat questions in the DeepSeek-V2
chat format. It exists to exercise the engine end to end; it knows very little.

## Architecture (config.json)

- `model_type` `deepseek_v2`, `DeepseekV2ForCausalLM`; hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers,
  {cfg['num_attention_heads']} heads; bf16 weights in `model.safetensors` with the original per-expert tensor names
  (`model.layers.{{i}}.mlp.experts.{{e}}.gate_proj.weight`, ...).
- MLA with `q_lora_rank` {cfg['q_lora_rank']} (q_a_proj -> q_a_layernorm -> q_b_proj), `kv_lora_rank` {cfg['kv_lora_rank']},
  `qk_nope_head_dim` {cfg['qk_nope_head_dim']}, `qk_rope_head_dim` {cfg['qk_rope_head_dim']}, `v_head_dim` {cfg['v_head_dim']}:
  the latent cache holds {cfg['kv_lora_rank'] + cfg['qk_rope_head_dim']} values per token per layer.
- YaRN `rope_scaling`: factor {rs['factor']}, original_max_position_embeddings {rs['original_max_position_embeddings']},
  beta_fast {rs['beta_fast']}, beta_slow {rs['beta_slow']}, mscale {rs['mscale']}, mscale_all_dim {rs['mscale_all_dim']}
  (max_position_embeddings {cfg['max_position_embeddings']}); trained with this scaling applied at 512-token context.
- DeepSeekMoE: layer 0 dense (intermediate {cfg['intermediate_size']}), layers 1-{cfg['num_hidden_layers'] - 1} MoE with
  {cfg['n_routed_experts']} routed experts (moe_intermediate {cfg['moe_intermediate_size']}) in {cfg['n_group']} groups,
  `topk_method` `group_limited_greedy` keeping {cfg['topk_group']} groups, {cfg['num_experts_per_tok']} experts per token,
  `routed_scaling_factor` {cfg['routed_scaling_factor']}, `norm_topk_prob` false, softmax scoring, and
  {cfg['n_shared_experts']} shared experts.
- Vocabulary: {info['n_tokens']} tokens (byte-level BPE, BOS `<｜begin▁of▁sentence｜>` = {cfg['bos_token_id']},
  EOS `<｜end▁of▁sentence｜>` = {cfg['eos_token_id']}); the embedding has {cfg['vocab_size']} rows, rows from
  {info['n_tokens']} on are padding and must never be sampled (as in DeepSeek-V2).

## Tokenizer

`tokenizer.json` was trained with Hugging Face `tokenizers` (BPE, {info['n_tokens'] - 2} merges-based tokens
including the 256 byte symbols) on the training split. Pre-tokenizer: a Sequence of the three Split rules
copied programmatically from DeepSeek-V3's published `tokenizer.json`, then ByteLevel without prefix space;
no normalizer; ByteLevel decoder. `tokenizer_config.json` has `add_bos_token` true and the DeepSeek-V2 chat
template, which renders `<｜begin▁of▁sentence｜>{{system}}\\n\\nUser: {{u1}}\\n\\nAssistant: {{a1}}<｜end▁of▁sentence｜>User: {{u2}}\\n\\nAssistant:`.

## Training data (all public domain, from Debian 12 packages)

| package | version | text and licence (from /usr/share/doc/PACKAGE/copyright) |
|---|---|---|
{pk}

`training_data_sources.json` has the full copyright files, package versions and the sha256 of every input.

Documents: Bible chapters, Jargon File chapters and entries, Devil's Dictionary entries, and chat examples
built from them (a word's definition or a verse as the answer, in the V2 chat format) plus a few fixed
small-talk exchanges. About one document in 20 (chosen by a CRC of source and index) is held out, with the
chat examples made from it.

| source/split | documents | bytes |
|---|---|---|
{docs}

## Training

{info['train_tokens']:,} training tokens, {info['heldout_tokens']:,} held-out tokens. AdamW (betas 0.9/0.95, weight decay
{a['weight_decay']}), peak lr {a['lr']} with {a['warmup']} warm-up steps and cosine decay to {a['min_lr_frac']} of it,
{a['steps']} steps of {a['batch']} x {a['seq']} tokens, bf16 autocast, residual dropout {a['dropout']} (training only),
sequence-level balance loss alpha {a['aux_alpha']}.
The checkpoint with the best held-out loss (step {info['best_step']}) was kept. {info['train_seconds']:.0f} s of
training on one {info['device']} (torch {info['torch']}).

| step | train loss | held-out loss | held-out ppl |
|---|---|---|---|
{hist}

## Validation perplexity

On `tests/data/demo/val.txt` (held-out text, {info['val_tokens']:,} tokens): **ppl {info['ppl32']:.4f}** with the bf16
weights upcast to float32 (float64: {info['ppl64']:.4f}). Protocol: ids = tokenizer.encode(text) without BOS; split
into consecutive non-overlapping windows of 256 tokens (a final shorter window is kept if it has at least 2
tokens); each window is evaluated independently from an empty cache; nll of tokens w[1:] given their prefixes
over all {cfg['vocab_size']} logits; ppl = exp(total nll / total predicted tokens). `tests/data/demo/golden.json` holds the
same numbers and per-window losses.

Cross-check: {info['hf_note']}.

## Samples (from the shipped weights, float32; `|` marks the end of the prompt)

```
{samples}
```

Notes: raw completion starts with BOS (`add_bos_token`); transformers' AutoTokenizer loads this
`tokenizer.json` (ByteLevel post-processor, like DeepSeek-V3's) without adding BOS, so add it yourself there.

## Reproduce

On a machine with PyTorch and `tokenizers` (a GPU is advised; CPU works but is slow):

```
apt-get install bible-kjv bible-kjv-text jargon-text dict-devil
/usr/bin/python3 tools/train_demo/prepare_data.py          # writes .demo-data/
{cmd}
```

then copy `OUT/dsv2-demo/*` to `models/dsv2-demo/` and `OUT/golden/*` to `tests/data/demo/`.
GPU kernels are not bit-reproducible, so a rerun gives a similar, not identical, model.
"""
