"""A small DeepSeek-V2 in PyTorch, written from section 3 of the project's model contract
(docs/deepseek-v2-reference.md), for training the demo model, plus a float64 reference forward pass
that reads the exported, per-expert named weights.

Two implementations of the same function:
  DeepseekV2 (nn.Module)  training/evaluation model; MoE computed densely over the stacked experts
                          with the routing weights scattered (unselected experts get weight 0, which
                          is exactly the sparse result); attention decompressed.
  reference_logits(...)   float64, tensor-name driven, sparse routing with an explicit loop over the
                          chosen experts, attention computed from the latent cache (absorbed form).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LATENT_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm: the original code never passes rms_norm_eps


class Cfg:
    def __init__(self, d):
        self.__dict__.update(d)
        self.raw = d

    @property
    def qk_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, i):
        return (self.n_routed_experts is not None and i >= self.first_k_dense_replace
                and i % self.moe_layer_freq == 0)


def _yarn_m(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_tables(cfg, positions, dtype=torch.float64):
    """cos, sin [len(positions), rope/2] (already multiplied by the YaRN attention_factor)."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    i = torch.arange(0, dim // 2, dtype=torch.float64)
    extra = base ** (-2.0 * i / dim)
    factor = 1.0
    rs = cfg.rope_scaling
    if rs is None:
        inv_freq = extra
    else:
        if rs.get("type", rs.get("rope_type")) != "yarn":
            raise ValueError(f"rope_scaling type {rs!r} is not implemented")
        f = rs["factor"]
        L = rs["original_max_position_embeddings"]
        inter = extra / f

        def corr(r):
            return dim * math.log(L / (r * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr(rs.get("beta_fast", 32))), 0)
        high = min(math.ceil(corr(rs.get("beta_slow", 1))), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((i - low) / (high - low)).clamp(0, 1)
        mask = 1.0 - ramp
        inv_freq = inter * (1 - mask) + extra * mask
        factor = _yarn_m(f, rs.get("mscale", 1)) / _yarn_m(f, rs.get("mscale_all_dim", 0))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return (torch.cos(ang) * factor).to(dtype), (torch.sin(ang) * factor).to(dtype)


def softmax_scale(cfg):
    scale = cfg.qk_head_dim ** -0.5
    rs = cfg.rope_scaling
    if rs is not None and rs.get("mscale_all_dim") and rs["factor"] > 1:
        m = _yarn_m(rs["factor"], rs["mscale_all_dim"])
        scale = scale * m * m
    return scale


def apply_rope(x, cos, sin):
    """x [..., T, n, rope] with adjacent pairs (x[2i], x[2i+1]); cos/sin [T, rope/2].
    Output de-interleaved like the original code: out[i] = x0 c - x1 s, out[i + rope/2] = x1 c + x0 s."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        h = x if x.dtype == torch.float64 else x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class MLA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, nh = cfg.hidden_size, cfg.num_attention_heads
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(H, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, nh * cfg.qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(H, nh * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, nh * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(nh * cfg.v_head_dim, H, bias=False)
        self.scale = softmax_scale(cfg)

    def forward(self, x, cos, sin):
        cfg = self.cfg
        B, T, _ = x.shape
        nh, nope, rope, vd = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if cfg.q_lora_rank else self.q_proj(x)
        q = q.view(B, T, nh, nope + rope)                               # {B,T,nh,nope+rope}
        q_nope, q_pe = q[..., :nope], q[..., nope:]
        ckv = self.kv_a_proj_with_mqa(x)                                # {B,T,kv_lora+rope}
        c, k_pe = ckv[..., :cfg.kv_lora_rank], ckv[..., cfg.kv_lora_rank:]
        kv = self.kv_b_proj(self.kv_a_layernorm(c)).view(B, T, nh, nope + vd)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        q_pe = apply_rope(q_pe, cos.to(q.dtype), sin.to(q.dtype))
        k_pe = apply_rope(k_pe.view(B, T, 1, rope), cos.to(q.dtype), sin.to(q.dtype))  # one k_pe for all heads
        qh = torch.cat([q_nope, q_pe], -1).transpose(1, 2)             # {B,nh,T,nope+rope}
        kh = torch.cat([k_nope, k_pe.expand(B, T, nh, rope)], -1).transpose(1, 2)
        vh = v.transpose(1, 2)                                          # {B,nh,T,v}
        if hasattr(F, "scaled_dot_product_attention") and torch.__version__ >= "2.1":
            # Pad V to the QK width so every fused kernel applies; the padding columns stay 0.
            vp = F.pad(vh, (0, nope + rope - vd))
            o = F.scaled_dot_product_attention(qh, kh, vp, is_causal=True, scale=self.scale)[..., :vd]
        else:
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            s = (qh.to(ct) @ kh.to(ct).transpose(-1, -2)) * self.scale
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            p = s.masked_fill(mask, float("-inf")).softmax(-1)
            o = (p @ vh.to(ct)).to(x.dtype)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, nh * vd))


class MLP(nn.Module):
    def __init__(self, H, inter):
        super().__init__()
        self.gate_proj = nn.Linear(H, inter, bias=False)
        self.up_proj = nn.Linear(H, inter, bias=False)
        self.down_proj = nn.Linear(inter, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def route(cfg, x, gate_w):
    """Router in fp32. x {N,H}; returns (scores {N,E} before group masking, top-k idx {N,k}, weights {N,k})."""
    xs = x if x.dtype == torch.float64 else x.float()  # fp32 router; the float64 reference stays in float64
    with torch.autocast(device_type=x.device.type, enabled=False):
        s = (xs @ gate_w.to(xs.dtype).t()).softmax(-1)
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    if cfg.topk_method == "greedy":
        w, idx = torch.topk(s, k, dim=-1)
    elif cfg.topk_method == "group_limited_greedy":
        N = s.shape[0]
        g = s.view(N, cfg.n_group, E // cfg.n_group).max(-1).values           # {N,n_group}
        gi = torch.topk(g, cfg.topk_group, dim=-1).indices
        gmask = torch.zeros_like(g).scatter(1, gi, 1.0)
        emask = gmask[:, :, None].expand(N, cfg.n_group, E // cfg.n_group).reshape(N, E)
        w, idx = torch.topk(s.masked_fill(emask == 0, 0.0), k, dim=-1)
    else:
        raise ValueError(f"topk_method {cfg.topk_method!r} is not implemented")
    if k > 1 and cfg.norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    else:
        w = w * cfg.routed_scaling_factor
    return s, idx, w


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        E, H, I = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_weight = nn.Parameter(torch.empty(E, H))
        self.w_gate = nn.Parameter(torch.empty(E, I, H))
        self.w_up = nn.Parameter(torch.empty(E, I, H))
        self.w_down = nn.Parameter(torch.empty(E, H, I))
        self.shared_experts = MLP(H, cfg.n_shared_experts * I) if cfg.n_shared_experts else None

    def forward(self, x, aux_alpha=0.0):
        cfg = self.cfg
        B, T, H = x.shape
        xf = x.reshape(B * T, H)
        s, idx, w = route(cfg, xf, self.gate_weight)
        comb = torch.zeros_like(s).scatter(1, idx, w)                             # {N,E}
        wg, wu, wd = (p.to(x.dtype) for p in (self.w_gate, self.w_up, self.w_down))
        h = F.silu(torch.einsum("nh,eih->nei", xf, wg)) * torch.einsum("nh,eih->nei", xf, wu)
        y = torch.einsum("nei,ehi->neh", h, wd)                                   # {N,E,H}
        out = torch.einsum("ne,neh->nh", comb, y.to(comb.dtype)).to(x.dtype).view(B, T, H)  # fp32 accumulation
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        aux = None
        if aux_alpha > 0:
            # Sequence-level balance loss (seq_aux) of the original training code.
            E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
            ce = torch.zeros(B, E, device=x.device).scatter_add(
                1, idx.view(B, T * k), torch.ones(B, T * k, device=x.device)) / (T * k / E)
            aux = (ce * s.view(B, T, E).mean(1)).sum(1).mean() * aux_alpha
        return out, aux


class Layer(nn.Module):
    def __init__(self, cfg, i, dropout=0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)  # training-only regularization of the residual branches
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg)
        self.moe = cfg.is_moe_layer(i)
        self.mlp = MoE(cfg) if self.moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, aux_alpha):
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin))
        h = self.post_attention_layernorm(x)
        if self.moe:
            y, aux = self.mlp(h, aux_alpha)
        else:
            y, aux = self.mlp(h), None
        return x + self.drop(y), aux


class DeepseekV2(nn.Module):
    def __init__(self, cfg, dropout=0.0):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Layer(cfg, i, dropout) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def init_weights(self, seed):
        g = torch.Generator().manual_seed(seed)
        std = self.cfg.initializer_range
        out_std = std / math.sqrt(2 * self.cfg.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                s = out_std if ("o_proj" in name or "down" in name) else std
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * s)

    def forward(self, ids, aux_alpha=0.0):
        B, T = ids.shape
        wdt = self.embed_tokens.weight.dtype
        cos, sin = rope_tables(self.cfg, torch.arange(T), torch.float64 if wdt == torch.float64 else torch.float32)
        cos, sin = cos.to(ids.device), sin.to(ids.device)
        x = self.embed_tokens(ids)
        aux_total = None
        for layer in self.layers:
            x, aux = layer(x, cos, sin, aux_alpha)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        logits = self.lm_head(self.norm(x))
        return (logits if logits.dtype == torch.float64 else logits.float()), aux_total

    # ---- checkpoint names (the original per-expert layout)
    def export_tensors(self):
        out = {}
        for name, p in self.state_dict().items():
            if name.startswith("embed_tokens") or name.startswith("layers.") or name.startswith("norm."):
                full = "model." + name
            else:
                full = name
            if ".mlp.gate_weight" in full:
                out[full.replace(".mlp.gate_weight", ".mlp.gate.weight")] = p
            elif ".mlp.w_" in full:
                base = full.split(".mlp.w_")[0] + ".mlp.experts"
                kind = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}[full.split(".mlp.w_")[1]]
                for e in range(p.shape[0]):
                    out[f"{base}.{e}.{kind}.weight"] = p[e]
            else:
                out[full] = p
        return {k: v.detach().contiguous() for k, v in out.items()}

    def load_exported(self, tensors):
        """Inverse of export_tensors (used to evaluate the bf16-rounded weights)."""
        sd = {}
        cfg = self.cfg
        for name in self.state_dict():
            full = name if name.startswith("lm_head") else "model." + name
            if ".mlp.gate_weight" in full:
                sd[name] = tensors[full.replace(".mlp.gate_weight", ".mlp.gate.weight")]
            elif ".mlp.w_" in full:
                base = full.split(".mlp.w_")[0] + ".mlp.experts"
                kind = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}[full.split(".mlp.w_")[1]]
                sd[name] = torch.stack([tensors[f"{base}.{e}.{kind}.weight"] for e in range(cfg.n_routed_experts)])
            else:
                sd[name] = tensors[full]
        self.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})


# ------------------------------------------------------------------ float64 reference


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def reference_logits(cfg, W, ids):
    """Float64 logits {T,V} for one sequence `ids` (list of ints), from the named tensors W (float64),
    computed token by token from a latent cache (absorbed MLA) with sparse routing."""
    dev = W["lm_head.weight"].device
    T = len(ids)
    nh, nope, rope, vd, r = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                             cfg.v_head_dim, cfg.kv_lora_rank)
    scale = softmax_scale(cfg)
    cos, sin = rope_tables(cfg, torch.arange(T), torch.float64)
    cos, sin = cos.to(dev), sin.to(dev)
    x = W["model.embed_tokens.weight"][torch.tensor(ids, device=dev)]           # {T,H}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = _rms(x, W[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        if cfg.q_lora_rank:
            q = _rms(h @ W[p + "self_attn.q_a_proj.weight"].t(), W[p + "self_attn.q_a_layernorm.weight"],
                     LATENT_NORM_EPS) @ W[p + "self_attn.q_b_proj.weight"].t()
        else:
            q = h @ W[p + "self_attn.q_proj.weight"].t()
        q = q.view(T, nh, nope + rope)
        ckv = h @ W[p + "self_attn.kv_a_proj_with_mqa.weight"].t()                # {T,r+rope}
        c = _rms(ckv[:, :r], W[p + "self_attn.kv_a_layernorm.weight"], LATENT_NORM_EPS)  # latent cache {T,r}
        k_pe = apply_rope(ckv[:, None, r:], cos, sin)[:, 0]                         # {T,rope}
        q_pe = apply_rope(q[..., nope:], cos, sin)                                  # {T,nh,rope}
        kvb = W[p + "self_attn.kv_b_proj.weight"].view(nh, nope + vd, r)
        w_uk, w_uv = kvb[:, :nope], kvb[:, nope:]                                   # {nh,nope,r} {nh,vd,r}
        q_lat = torch.einsum("thn,hnr->thr", q[..., :nope], w_uk)                  # absorbed query {T,nh,r}
        scores = (torch.einsum("thr,sr->hts", q_lat, c) + torch.einsum("thp,sp->hts", q_pe, k_pe)) * scale
        causal = torch.ones(T, T, dtype=torch.bool, device=dev).triu(1)
        P = scores.masked_fill(causal, float("-inf")).softmax(-1)                   # {nh,T,T}
        o = torch.einsum("hts,sr->thr", P, c)                                       # {T,nh,r}
        o = torch.einsum("thr,hvr->thv", o, w_uv).reshape(T, nh * vd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].t()
        h = _rms(x, W[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)

        def mlp(pre, v):
            return (F.silu(v @ W[pre + "gate_proj.weight"].t()) * (v @ W[pre + "up_proj.weight"].t())) \
                @ W[pre + "down_proj.weight"].t()

        if cfg.is_moe_layer(i):
            _, idx, wts = route(cfg, h, W[p + "mlp.gate.weight"])
            wts = wts.to(torch.float64)
            y = torch.zeros_like(h)
            for e in range(cfg.n_routed_experts):
                tok, slot = (idx == e).nonzero(as_tuple=True)
                if len(tok):
                    y.index_add_(0, tok, wts[tok, slot, None] * mlp(f"{p}mlp.experts.{e}.", h[tok]))
            if cfg.n_shared_experts:
                y = y + mlp(p + "mlp.shared_experts.", h)
        else:
            y = mlp(p + "mlp.", h)
        x = x + y
    return _rms(x, W["model.norm.weight"], cfg.rms_norm_eps) @ W["lm_head.weight"].t()
