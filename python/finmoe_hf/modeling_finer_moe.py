"""finmoe's `finer_moe` (FineRMoE) and `finmoe_dense` (FinMoE dense MoE)
decoders for Hugging Face transformers (trust_remote_code).

Qwen2-style decoder layers (RMSNorm, rotary attention with grouped K/V, SwiGLU)
whose FFN is a mixture of experts:

  finer_moe     router logits -> FineRMoE's bi-level mask (T_I experts in each
                group of G_I*R_I, and in each of the G_O output slices only the
                group of the best of its R_O candidates) -> top-k (k = T_I*G_O)
                -> one softmax over the k selected logits. Expert e writes the
                hidden_size/G_O values of output slice e // (R_O*G_I*R_I); the
                slices are concatenated (optionally through concat_proj), and a
                shared expert gated by sigmoid(shared_expert_gate(x)) is added.
                With router_mode "separate" a second router concat_gate
                [G_O*R_O, D] picks each slice's candidate instead of the group
                sums; the first still picks T_I per group and gives the weights.
  finmoe_dense  every expert active, weighted by a softmax over all logits.

Parameter names are the checkpoint's tensor names, so from_pretrained loads
every tensor as saved. Forward, generate and the KV cache (DynamicCache) are
supported; the training-time load-balancing loss is not computed here.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_finer_moe import FineRMoeConfig, FinMoeDenseConfig


def _output(cls, cache, **fields):
    """An output with its KV cache under the field name this transformers uses
    (`cache` from 5.x on, `past_key_values` before)."""
    name = "cache" if "cache" in getattr(cls, "__dataclass_fields__", {}) else "past_key_values"
    return cls(**fields, **{name: cache})


class FinmoeRMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def yarn_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(config, dim):
    """Inverse frequencies [dim/2] and the factor on cos/sin, as finmoe (and HF) compute them."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    pos_freqs = float(config.rope_theta) ** exponents
    inv_freq = 1.0 / pos_freqs
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / scaling["factor"], 1.0
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        # YaRN: frequencies that turn fewer than beta_slow times over the
        # original context are interpolated (divided by the factor), those
        # that turn more than beta_fast times kept, a linear ramp between;
        # cos/sin carry the attention factor
        factor = float(scaling["factor"])
        orig = scaling.get("original_max_position_embeddings") or config.max_position_embeddings
        mscale, mscale_all = scaling.get("mscale") or 0, scaling.get("mscale_all_dim") or 0
        if scaling.get("attention_factor") is not None:
            attention = float(scaling["attention_factor"])
        elif mscale and mscale_all:
            attention = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
        else:
            attention = yarn_mscale(factor, 1.0)

        def correction_dim(rotations):
            return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(float(config.rope_theta)))

        low = max(math.floor(correction_dim(scaling.get("beta_fast", 32.0))), 0)
        high = min(math.ceil(correction_dim(scaling.get("beta_slow", 1.0))), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp
        return (1.0 / (factor * pos_freqs)) * (1 - keep) + inv_freq * keep, attention
    raise NotImplementedError(f"rope_scaling type '{kind}' (supported here: default, linear, llama3, yarn)")


class FinmoeRotary(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.interleaved = bool(config.rope_interleaved)
        self.config = config
        self.attention_scaling = 1.0
        self.inv_freq = None  # computed at the first call, not in __init__: from_pretrained
        #                       builds the model on the meta device

    def forward(self, positions):  # [B,T] -> cos, sin [B,T,d]
        if self.inv_freq is None or self.inv_freq.device != positions.device:
            with torch.device(positions.device):
                inv_freq, self.attention_scaling = rope_inv_freq(self.config, self.config.head_dim)
                self.inv_freq = inv_freq.to(positions.device)
        freqs = positions.float().unsqueeze(-1) * self.inv_freq
        if self.interleaved:  # pairs (2i, 2i+1)
            emb = freqs.repeat_interleave(2, dim=-1)
        else:  # rotate-half pairs (i, i + d/2)
            emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    def apply(self, x, cos, sin):  # x [B,H,T,d]
        cos = cos.unsqueeze(1).to(x.dtype)
        sin = sin.unsqueeze(1).to(x.dtype)
        if self.interleaved:
            pairs = x.unflatten(-1, (-1, 2))
            rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        else:
            half = x.shape[-1] // 2
            rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class FinmoeAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = config.attention_window(layer_idx)
        D, bias = config.hidden_size, bool(config.attention_bias)
        o_bias = bias and config.model_type == "finmoe_dense"  # llama family: o_proj too
        self.q_proj = nn.Linear(D, self.n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(D, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(D, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, D, bias=o_bias)

    def forward(self, x, cos, sin, rotary, q_pos, k_pos, key_padding, past_key_values):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = rotary.apply(q, cos, sin), rotary.apply(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        groups = self.n_head // self.n_kv
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        # causal over cache slots (a slot's position is its index), the window,
        # and the caller's padding
        Tk = k.shape[2]
        kp = k_pos[-Tk:] if k_pos.shape[0] >= Tk else torch.arange(Tk, device=x.device)
        allowed = kp.view(1, 1, 1, Tk) <= q_pos.view(1, 1, T, 1)
        if self.window > 0:
            allowed = allowed & (kp.view(1, 1, 1, Tk) > q_pos.view(1, 1, T, 1) - self.window)
        if key_padding is not None:
            allowed = allowed & key_padding[:, -Tk:].bool().view(B, 1, 1, Tk)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.o_proj(out)


class FinmoeMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); `out` values (an expert's slice)."""

    def __init__(self, hidden, intermediate, bias=False, out=None):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, out or hidden, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def finer_moe_mask(logits, config, concat_logits=None):
    """FineRMoE Algorithm 1: the experts a token may use. logits [T,E] -> bool [T,E].
    concat_logits [T,G_O*R_O] (router_mode separate) choose the candidates."""
    T = logits.shape[0]
    group = config.G_I * config.R_I
    groups = config.G_O * config.R_O
    scores = logits.view(T, groups, group)
    best = scores.topk(config.T_I, dim=-1).indices
    in_group = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, best, True)
    cc_score = scores.sum(-1) if concat_logits is None else concat_logits
    candidate = cc_score.view(T, config.G_O, config.R_O).argmax(-1, keepdim=True)
    chosen = torch.zeros(T, config.G_O, config.R_O, dtype=torch.bool, device=logits.device)
    chosen = chosen.scatter_(-1, candidate, True).view(T, groups, 1)
    return (in_group & chosen).reshape(T, config.num_experts)


class FinmoeSparseMoe(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.dense = config.model_type == "finmoe_dense"
        G_O = 1 if self.dense else config.G_O
        self.slice = D // G_O
        self.per_slice = config.num_experts if self.dense else config.R_O * config.G_I * config.R_I
        self.gate = nn.Linear(D, config.num_experts, bias=False)
        self.concat_gate = None
        if not self.dense and getattr(config, "router_mode", "single") == "separate":
            self.concat_gate = nn.Linear(D, config.G_O * config.R_O, bias=False)
        self.experts = nn.ModuleList(
            FinmoeMLP(D, config.moe_intermediate_size, out=self.slice) for _ in range(config.num_experts))
        self.shared_expert = None
        self.shared_expert_gate = None
        if config.shared_expert_intermediate_size > 0:
            self.shared_expert = FinmoeMLP(D, config.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(D, 1, bias=False)
        self.concat_proj = nn.Linear(D, D, bias=False) if getattr(config, "moe_concat_proj", False) else None

    def route(self, logits, concat_logits=None):  # [T,E] float32 -> weights [T,k], indices [T,k]
        c = self.config
        if self.dense:
            E = c.num_experts
            return torch.softmax(logits, -1), torch.arange(E, device=logits.device).expand(logits.shape[0], E)
        if c.G_O * c.R_O > 1 or c.T_I < c.G_I * c.R_I:
            logits = logits.masked_fill(~finer_moe_mask(logits, c, concat_logits), float("-inf"))
        top, indices = logits.topk(c.num_experts_per_tok, dim=-1)
        weights = torch.softmax(top, -1)  # one softmax over the k selected logits
        if concat_logits is not None:
            # the chosen candidate's probability p over its slice's R_O, as p / p.detach()
            # (value 1): the weights stay the first router's, gradients reach concat_gate
            p = torch.softmax(concat_logits.view(-1, c.G_O, c.R_O), -1).max(-1).values  # [T,G_O]
            weights = weights * (p / p.detach()).gather(1, indices // self.per_slice)
        return weights, indices

    def forward(self, x_in):
        shape = x_in.shape
        x = x_in.reshape(-1, shape[-1])
        T, D = x.shape
        logits = self.gate(x).float()
        concat_logits = None if self.concat_gate is None else self.concat_gate(x).float()
        weights, indices = self.route(logits, concat_logits)
        out = torch.zeros(T, D, dtype=x.dtype, device=x.device)
        for e in range(self.config.num_experts):
            rows, slot = (indices == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = self.experts[e](x[rows]) * weights[rows, slot].to(x.dtype).unsqueeze(1)
            col = (e // self.per_slice) * self.slice
            out[:, col:col + self.slice].index_add_(0, rows, y)
        if self.concat_proj is not None:
            out = self.concat_proj(out)
        if self.shared_expert is not None:
            out = out + self.shared_expert(x) * torch.sigmoid(self.shared_expert_gate(x))
        return out.view(shape), logits


class FinmoeDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = FinmoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = FinmoeAttention(config, layer_idx)
        self.post_attention_layernorm = FinmoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        if self.is_moe:
            self.mlp = FinmoeSparseMoe(config)
        else:
            self.mlp = FinmoeMLP(config.hidden_size, config.intermediate_size, bias=bool(config.mlp_bias))

    def forward(self, x, cos, sin, rotary, q_pos, k_pos, key_padding, past_key_values):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, rotary, q_pos, k_pos, key_padding,
                               past_key_values)
        h = self.post_attention_layernorm(x)
        router_logits = None
        if self.is_moe:
            y, router_logits = self.mlp(h)
        else:
            y = self.mlp(h)
        return x + y, router_logits


class FinmoePreTrainedModel(PreTrainedModel):
    config_class = FineRMoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["FinmoeDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_cache_class = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
            elif isinstance(module, FinmoeRMSNorm):
                module.weight.fill_(1.0)


class FinmoeModel(FinmoePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(FinmoeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = FinmoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = FinmoeRotary(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_router_logits=False,
                cache=None, **kwargs):
        past_key_values = past_key_values if past_key_values is not None else cache
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        B, T, _ = inputs_embeds.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        device = inputs_embeds.device
        slots = torch.arange(past + T, device=device)  # cache slot i holds position i
        q_pos = slots[past:]
        if position_ids is None:
            position_ids = q_pos.unsqueeze(0).expand(B, T)
        cos, sin = self.rotary(position_ids)
        key_padding = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        x = inputs_embeds
        router_logits = []
        for layer in self.layers:
            x, r = layer(x, cos, sin, self.rotary, q_pos, slots, key_padding,
                         past_key_values if use_cache else None)
            if r is not None:
                router_logits.append(r)
        out = _output(BaseModelOutputWithPast, past_key_values if use_cache else None,
                      last_hidden_state=self.norm(x))
        out.kv_cache = past_key_values if use_cache else None
        out.router_logits = tuple(router_logits) if output_router_logits else None
        return out


class FineRMoeForCausalLM(FinmoePreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = FinmoeModel(config)
        # tied embeddings: finmoe saves no lm_head tensor; the logits use embed_tokens
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def tie_weights(self, *args, **kwargs):  # nothing to tie: see __init__
        pass

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_router_logits=False,
                logits_to_keep=0, cache=None, **kwargs):
        past_key_values = past_key_values if past_key_values is not None else cache
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, output_router_logits=output_router_logits)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, weight).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        result = _output(CausalLMOutputWithPast, out.kv_cache, loss=loss, logits=logits)
        result.router_logits = out.router_logits
        return result


class FinMoeDenseForCausalLM(FineRMoeForCausalLM):
    config_class = FinMoeDenseConfig
