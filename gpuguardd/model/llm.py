"""Architecture facts of LLMs: parameter count, FLOPs and KV-cache bytes per token.

Built from the fields of a Hugging Face ``config.json`` (nothing is downloaded); the built-in
catalogue holds the public configs of the models the simulator and the allocator know by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}


class ModelConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class LlmArch:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    dtype_bytes: int = 2
    qkv_bias: bool = False
    qk_norm: bool = False

    @staticmethod
    def from_hf_config(name: str, cfg: Mapping[str, Any]) -> LlmArch:
        """Read the fields every decoder-only HF config carries; missing ones are an error."""
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            arch = LlmArch(
                name=name,
                hidden_size=hidden,
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                intermediate_size=int(cfg["intermediate_size"]),
                vocab_size=int(cfg["vocab_size"]),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                dtype_bytes=_DTYPE_BYTES.get(str(cfg.get("torch_dtype", "bfloat16")), 2),
                qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
                qk_norm=cfg.get("model_type") == "qwen3",
            )
        except KeyError as e:
            raise ModelConfigError(f"{name}: config.json lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ModelConfigError(f"{name}: config.json has a bad value: {e}") from None
        if min(arch.hidden_size, arch.num_layers, arch.num_heads, arch.vocab_size) <= 0:
            raise ModelConfigError(f"{name}: sizes must be positive")
        return arch

    @property
    def params(self) -> int:
        """Total parameters: embeddings (+ untied LM head), attention, gated MLP, norms."""
        h, hd = self.hidden_size, self.head_dim
        q = h * self.num_heads * hd
        kv = 2 * h * self.num_kv_heads * hd
        o = self.num_heads * hd * h
        bias = (self.num_heads + 2 * self.num_kv_heads) * hd if self.qkv_bias else 0
        mlp = 3 * h * self.intermediate_size
        norms = 2 * h + (2 * hd if self.qk_norm else 0)
        layer = q + kv + o + bias + mlp + norms
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + h

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def prefill_flops(self, prompt_tokens: int) -> float:
        """≈ 2·N·T for the matmuls plus causal attention ≈ 2·layers·T²·heads·head_dim."""
        t = prompt_tokens
        non_embed = self.params - self.vocab_size * self.hidden_size
        attn = 2.0 * self.num_layers * t * t * self.num_heads * self.head_dim
        return 2.0 * non_embed * t + attn

    def decode_bytes(self, context_tokens: int, batch: int = 1) -> float:
        """Bytes read from HBM per decode step: all weights once + each sequence's KV."""
        return float(self.weight_bytes + batch * context_tokens * self.kv_bytes_per_token)


def _hf(**kw: Any) -> dict[str, Any]:
    return kw


# Public config.json values (hidden, layers, heads, kv heads, head_dim, MLP, vocab, tying).
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "llama2-7b": _hf(model_type="llama", hidden_size=4096, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                     vocab_size=32000, tie_word_embeddings=False, torch_dtype="float16"),
    "Qwen3-0.6B": _hf(model_type="qwen3", hidden_size=1024, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True,
                      torch_dtype="bfloat16"),
    "Qwen3-1.7B": _hf(model_type="qwen3", hidden_size=2048, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      intermediate_size=6144, vocab_size=151936, tie_word_embeddings=True,
                      torch_dtype="bfloat16"),
    "Qwen3-4B": _hf(model_type="qwen3", hidden_size=2560, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                    intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True,
                    torch_dtype="bfloat16"),
    "Qwen3-8B": _hf(model_type="qwen3", hidden_size=4096, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                    intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False,
                    torch_dtype="bfloat16"),
    "DeepSeek-R1-Distill-Qwen-1.5B": _hf(model_type="qwen2", hidden_size=1536,
                                         num_hidden_layers=28, num_attention_heads=12,
                                         num_key_value_heads=2, intermediate_size=8960,
                                         vocab_size=151936, tie_word_embeddings=False,
                                         torch_dtype="bfloat16"),
    "DeepSeek-R1-Distill-Qwen-7B": _hf(model_type="qwen2", hidden_size=3584,
                                       num_hidden_layers=28, num_attention_heads=28,
                                       num_key_value_heads=4, intermediate_size=18944,
                                       vocab_size=152064, tie_word_embeddings=False,
                                       torch_dtype="bfloat16"),
}

BUILTIN: dict[str, LlmArch] = {n: LlmArch.from_hf_config(n, c) for n, c in BUILTIN_CONFIGS.items()}


def builtin(name: str) -> LlmArch:
    try:
        return BUILTIN[name]
    except KeyError:
        raise ModelConfigError(
            f"unknown model {name!r}; built-in: {', '.join(sorted(BUILTIN))}"
        ) from None
