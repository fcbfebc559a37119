"""Test helpers: a tiny random LLaMA, an RTN QuantizedModel from any HF model, dequantized references."""
from __future__ import annotations

import numpy as np

from .config import layer_names


def tiny_llama(seed=0, vocab=256, hidden=128, ffn=320, layers=2, heads=4, kv_heads=2, tie=False, **extra):
    """A random transformers LlamaForCausalLM small enough for unit tests (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                      tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, **extra)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # larger-than-default weights so that logits are well separated
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    return model


FAMILY_CONFIGS = {          # tiny configs per family (the features each family adds are switched on)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=8, pad_token_id=0)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(head_dim=32, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                    final_logit_softcapping=3.0, layer_types=["sliding_attention", "full_attention"])),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
                    layer_types=["sliding_attention", "full_attention"],
                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                     "full_attention": {"rope_type": "default", "rope_theta": 500000.0}})),
}


def tiny_family(family, seed=0, vocab=256, hidden=128, ffn=256, layers=2, heads=4, kv_heads=2, **extra):
    """A random transformers model of `family` (a FAMILY_CONFIGS key) with random norms and biases
    too, float32, eager attention (exact softcapping and sliding windows)."""
    import torch
    import transformers
    cfg_name, model_name, opts = FAMILY_CONFIGS[family]
    cfg = getattr(transformers, cfg_name)(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, **{**opts, **extra})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(cfg).eval()
    gemma = family.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            elif name.endswith("norm.weight"):
                p.normal_(0.0, 0.1)
                if not gemma:
                    p += 1.0
            else:                      # biases
                p.normal_(0.0, 0.1)
    return model


def quantize_hf(model, bits=4, group_size=128, method="rtn", lm_head_bits=None):
    """quant.QuantizedModel from an HF LLaMA model: every nn.Linear (and lm_head) via quant.quantize."""
    import torch
    import quant
    linears, tensors = {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            b = lm_head_bits if (name == "lm_head" and lm_head_bits) else bits
            linears[name] = quant.quantize(mod.weight.detach(), b, group_size, method=method)
    for name, p in model.named_parameters():
        mod_name, leaf = name.rsplit(".", 1)
        if mod_name not in linears or leaf != "weight":          # biases of linears stay float tensors
            tensors[name] = p.detach().float().numpy().copy()
    if "lm_head" not in linears:
        linears["lm_head"] = quant.quantize(model.get_output_embeddings().weight.detach(),
                                            lm_head_bits or bits, group_size, method=method)
    if "model.embed_tokens.weight" not in tensors:
        tensors["model.embed_tokens.weight"] = model.get_input_embeddings().weight.detach().float().numpy().copy()
    return quant.QuantizedModel(config=model.config.to_dict(), linears=linears, tensors=tensors,
                                meta=dict(bits=bits, group_size=group_size, method=method))


def dequantized_hf(model, qm):
    """A copy of `model` whose linear weights are qm's dequantized weights (the float reference)."""
    import copy
    import torch
    ref = copy.deepcopy(model)
    ref.config.tie_word_embeddings = False
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.Linear) and name in qm.linears:
                mod.weight = torch.nn.Parameter(torch.from_numpy(qm.linears[name].dequantize()))
    return ref.eval()


def hf_greedy(model, ids, n):
    """Greedy continuation of `ids` by n tokens with transformers (the reference): a plain argmax
    loop over the model's own KV cache (no generate() logits processors: min_new_tokens would mask
    EOS, which the runtime does not)."""
    import torch
    out, past = [], None
    step = torch.tensor([list(ids)])
    with torch.no_grad():
        for _ in range(n):
            res = model(step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            t = int(res.logits[0, -1].argmax())
            out.append(t)
            step = torch.tensor([[t]])
    return out


def runtime_greedy(dec, ids, n):
    dec.reset()
    logits = dec.prefill(ids)
    out = []
    for _ in range(n):
        t = int(np.argmax(logits))
        out.append(t)
        if len(out) < n:
            logits = dec.decode(t)
    return out


def llama_config(vocab=49152, hidden=576, ffn=1536, layers=30, heads=9, kv_heads=3, theta=100000.0,
                 tie=True, max_pos=8192):
    """An HF-style LLaMA config dict (defaults: SmolLM2-135M's shapes)."""
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=hidden,
                intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, head_dim=hidden // heads, hidden_act="silu",
                max_position_embeddings=max_pos, rms_norm_eps=1e-5, rope_theta=theta,
                tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)


def random_qmodel(config: dict, bits=4, group_size=128, seed=0, lm_head_bits=None):
    """A QuantizedModel with random codes, scales and zeros for `config` (no float weights ever exist)."""
    import quant
    rng = np.random.default_rng(seed)
    H, F = config["hidden_size"], config["intermediate_size"]
    nh, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim") or H // nh

    def qt(n, k, b):
        g = -(-k // group_size)
        scales = (rng.random((b, n, g), np.float32) * 0.02 + 0.005) * (2.0 ** np.arange(b))[:, None, None]
        return quant.QuantizedTensor(bits=b, group_size=group_size, shape=(n, k),
                                     codes=rng.integers(0, 1 << b, (n, k), dtype=np.uint8),
                                     scales=scales.astype(np.float16),
                                     zeros=(-scales.sum(0) / 2).astype(np.float16), method="random")
    linears, tensors = {}, {}
    shapes = dict(q=(nh * d, H), k=(kv * d, H), v=(kv * d, H), o=(H, nh * d), gate=(F, H), up=(F, H), down=(H, F))
    for i in range(config["num_hidden_layers"]):
        names = layer_names(i)
        for key, (n, k) in shapes.items():
            linears[names[key]] = qt(n, k, bits)
        tensors[names["ln1"]] = np.ones(H, np.float32)
        tensors[names["ln2"]] = np.ones(H, np.float32)
    linears["lm_head"] = qt(config["vocab_size"], H, lm_head_bits or bits)
    tensors["model.embed_tokens.weight"] = rng.standard_normal((config["vocab_size"], H), np.float32) * 0.05
    tensors["model.norm.weight"] = np.ones(H, np.float32)
    return quant.QuantizedModel(config=dict(config), linears=linears, tensors=tensors,
                                meta=dict(bits=bits, group_size=group_size, method="random"))


class CharTokenizer:
    """A tokenizer for tests: token id = byte value + 3; 2 is EOS; no chat template."""
    eos_token_id = 2
    chat_template = None

    def encode(self, text):
        return [b + 3 for b in text.encode()]

    def decode(self, ids, skip_special_tokens=True):
        return bytes((i - 3) % 256 for i in ids if i >= 3).decode(errors="replace")
