"""Configurations of finmoe's `finer_moe` (FineRMoE) and `finmoe_dense` (FinMoE
dense MoE) checkpoints for Hugging Face transformers (trust_remote_code).

finmoe writes this file and modeling_finer_moe.py into every directory it
saves with one of these model types, with an `auto_map` in config.json, so
that `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
loads it. The defaults are finmoe's (include/finmoe/config.h), which omits a
key from config.json when its value is the default.
"""
try:  # transformers >= 5
    from transformers import PreTrainedConfig as _Config
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as _Config


class _FinmoeConfig(_Config):
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        head_dim=None,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=None,
        rope_interleaved=False,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=28,
        layer_types=None,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=None,
        shared_expert_intermediate_size=0,
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=None,
        router_aux_loss_coef=0.001,
        initializer_range=0.02,
        use_cache=True,
        **kwargs,
    ):
        # transformers >= 5 spells rope_theta and the scaling as one rope_parameters
        rope_parameters = kwargs.pop("rope_parameters", None)
        if isinstance(rope_parameters, dict):
            rope_theta = rope_parameters.get("rope_theta", rope_theta)
            if rope_parameters.get("rope_type", rope_parameters.get("type", "default")) != "default":
                rope_scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.rope_interleaved = rope_interleaved
        self.max_position_embeddings = max_position_embeddings
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.layer_types = layer_types
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size or intermediate_size
        self.shared_expert_intermediate_size = shared_expert_intermediate_size
        self.norm_topk_prob = norm_topk_prob
        self.decoder_sparse_step = decoder_sparse_step
        self.mlp_only_layers = list(mlp_only_layers or [])
        self.router_aux_loss_coef = router_aux_loss_coef
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        # Spelled out per layer, so that transformers' cache keeps a full cache
        # for the full-attention layers (it reads sliding_window alone as "all").
        self.layer_types = [
            "sliding_attention" if self.attention_window(i) else "full_attention"
            for i in range(num_hidden_layers)
        ]
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    # The per-layer choices finmoe derives (ModelConfig::finalize).
    def is_moe_layer(self, i):
        return (
            self.num_experts > 0
            and i not in self.mlp_only_layers
            and (i + 1) % self.decoder_sparse_step == 0
        )

    def attention_window(self, i):
        """0 = full causal attention, else keys within the last `window` positions."""
        if not self.use_sliding_window or not self.sliding_window:
            return 0
        if self.layer_types:
            return self.sliding_window if self.layer_types[i] == "sliding_attention" else 0
        return self.sliding_window if i >= self.max_window_layers else 0


class FineRMoeConfig(_FinmoeConfig):
    """FineRMoE (model_type `finer_moe`): Qwen2-MoE's layout with finer experts.

    N = G_I*R_I*G_O*R_O experts; each writes hidden_size/G_O values (its output
    slice); top-k = T_I*G_O; q/k/v carry a bias when `qkv_bias`. `router_mode`
    "single" (the paper's one router) or "separate" (a second router
    `concat_gate` chooses each output slice's candidate: the Table 3 ablation).
    """

    model_type = "finer_moe"

    def __init__(self, G_I=1, R_I=1, G_O=1, R_O=1, moe_concat_proj=False, router_mode="single", qkv_bias=True,
                 max_position_embeddings=32768, num_experts=60, num_experts_per_tok=4,
                 moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                 sliding_window=4096, **kwargs):
        self.G_I, self.R_I, self.G_O, self.R_O = G_I, R_I, G_O, R_O
        self.moe_concat_proj = moe_concat_proj
        if router_mode not in ("single", "separate"):
            raise ValueError(f"router_mode '{router_mode}' is not a router mode (single | separate)")
        self.router_mode = router_mode
        self.qkv_bias = qkv_bias
        kwargs.pop("attention_bias", None)  # finer_moe reads qkv_bias only
        kwargs.pop("mlp_bias", None)
        super().__init__(
            attention_bias=qkv_bias, max_position_embeddings=max_position_embeddings,
            num_experts=num_experts, num_experts_per_tok=num_experts_per_tok,
            moe_intermediate_size=moe_intermediate_size,
            shared_expert_intermediate_size=shared_expert_intermediate_size,
            sliding_window=sliding_window, **kwargs)
        n = G_I * R_I * G_O * R_O
        if self.num_experts != n:
            raise ValueError(f"num_experts {self.num_experts} != G_I*R_I*G_O*R_O = {n}")
        if self.num_experts_per_tok % G_O != 0:
            raise ValueError(f"num_experts_per_tok {self.num_experts_per_tok} is not a multiple of G_O={G_O}")
        if self.hidden_size % G_O != 0:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by G_O={G_O}")

    @property
    def T_I(self):
        return self.num_experts_per_tok // self.G_O


class FinMoeDenseConfig(_FinmoeConfig):
    """FinMoE dense MoE (model_type `finmoe_dense`): every expert active,
    weighted by a softmax over all router logits (FinMoE Eq. 1-2); Llama-style
    attention (`attention_bias` reaches o_proj too)."""

    model_type = "finmoe_dense"

    def __init__(self, **kwargs):
        kwargs.pop("use_sliding_window", None)  # finmoe_dense has no sliding window
        kwargs.pop("sliding_window", None)
        kwargs.pop("layer_types", None)
        super().__init__(sliding_window=None, **kwargs)
        self.num_experts_per_tok = self.num_experts
