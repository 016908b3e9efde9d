"""Write a (merged) Llama-architecture model and its tokenizer as one GGUF file, with the ``gguf`` package.

A small converter after llama.cpp's ``convert_hf_to_gguf.py``, for one architecture: ``LlamaForCausalLM``
(SmolLM, SmolLM2, TinyLlama and other Llama-style models) without attention or MLP biases, with SiLU and
plain (unscaled) RoPE, and a GPT-2-style byte-level BPE tokenizer. Anything else is refused with an error
naming what is supported. The binary format itself is written by ``gguf.GGUFWriter``.

What the readers expect, and so what is written:

- Llama metadata under ``llama.*`` (context length, sizes, heads, RoPE base and dimension, RMS-norm epsilon,
  vocabulary size) and ``general.file_type``.
- Tensors under llama.cpp's names (``token_embd``, ``blk.N.attn_q`` …, ``output_norm``, ``output`` only when
  the embeddings are not tied). The q and k projections are permuted as llama.cpp does for its RoPE layout;
  transformers' reader undoes that permutation. 1-D tensors (the norms) stay F32 in every output type.
- The tokenizer as ``tokenizer.ggml.*``: model ``gpt2``, tokens, token types (added special tokens are
  CONTROL), merges, bos/eos/unk/pad ids, ``add_bos_token``, ``add_space_prefix`` and the chat template, so
  ``AutoTokenizer.from_pretrained(folder, gguf_file=name)`` rebuilds the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from agilerl_selfsft.errors import SelfSFTError

SUPPORTED = (
    "Llama-architecture models (LlamaForCausalLM: SmolLM, SmolLM2, TinyLlama, …) without attention/MLP biases, "
    "with SiLU and unscaled RoPE, and a GPT-2-style byte-level BPE tokenizer"
)
Q = gguf.GGMLQuantizationType
OUTTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def check_supported(model: Any, tokenizer: Any) -> None:
    """Refuse, in one line, a model or tokenizer this converter does not handle.

    :param model: a transformers causal LM
    :param tokenizer: its (fast) tokenizer
    :raises SelfSFTError: naming what is unsupported and what is supported
    """
    cfg = model.config
    arch = (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    problem = None
    if cfg.model_type != "llama" or type(model).__name__ != "LlamaForCausalLM":
        problem = f"this model is {arch} (model_type {cfg.model_type!r})"
    elif getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        problem = "this model has attention or MLP biases"
    elif cfg.hidden_act != "silu":
        problem = f"this model's activation is {cfg.hidden_act!r}"
    elif _rope(cfg)[0] != "default":
        problem = f"this model uses {_rope(cfg)[0]!r} RoPE scaling"
    else:
        _tokenizer_pre(tokenizer)
    if problem:
        raise SelfSFTError(f"GGUF export supports {SUPPORTED}; {problem}")


def write_gguf(model: Any, tokenizer: Any, path: str | Path, outtype: str = "f16", name: str | None = None) -> None:
    """Write ``model`` (merged, any float dtype) and ``tokenizer`` as the GGUF file ``path``.

    :param model: a ``LlamaForCausalLM`` (see :data:`SUPPORTED`)
    :param tokenizer: its fast tokenizer
    :param path: the file to write (written directly: the caller stages it and renames it into place)
    :param outtype: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (rows whose length is not a multiple of 32 fall
        back to f16, as in llama.cpp); norms are F32 in every type
    :param name: ``general.name``, defaults to the model's folder name
    :raises SelfSFTError: for an unsupported model, tokenizer or output type
    """
    if outtype not in OUTTYPES:
        raise SelfSFTError(f"unsupported GGUF output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    check_supported(model, tokenizer)
    qtype, file_type = OUTTYPES[outtype]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    try:
        _write_metadata(writer, model.config, name or Path(str(model.name_or_path)).name or "model", file_type)
        _write_tokenizer(writer, tokenizer, model)
        for gguf_name, array in _tensors(model):
            _add_tensor(writer, gguf_name, array, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _rope(cfg: Any) -> tuple[str, float]:
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return kind, float(theta)


def _write_metadata(writer: gguf.GGUFWriter, cfg: Any, name: str, file_type: gguf.LlamaFileType) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads or cfg.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope(cfg)[1])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)
    if file_type not in (gguf.LlamaFileType.ALL_F32, gguf.LlamaFileType.MOSTLY_F16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer_json(tokenizer: Any) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        kind = type(tokenizer).__name__
        raise SelfSFTError(f"GGUF export supports {SUPPORTED}; this tokenizer ({kind}) is not a fast tokenizer")
    return json.loads(backend.to_str())


def _tokenizer_pre(tokenizer: Any) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer (``gpt-2``: GPT-2's split regex, or
    ``smollm``: digits split first). The model type is ``gpt2``; the pre-tokenizer is named ``gpt-2``."""
    data = _tokenizer_json(tokenizer)
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("use_regex", s.get("individual_digits"))) for s in steps]
    if data["model"]["type"] == "BPE":
        if kinds == [("ByteLevel", True)]:
            return "gpt-2"
        if kinds == [("Digits", True), ("ByteLevel", True)]:
            return "smollm"
    shape = "+".join(str(k) for k, _ in kinds) or "none"
    kind = data["model"]["type"]
    raise SelfSFTError(f"GGUF export supports {SUPPORTED}; this tokenizer is {kind} with pre-tokenizer {shape}")


def _write_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, model: Any) -> None:
    cfg, gen = model.config, getattr(model, "generation_config", None)
    data = _tokenizer_json(tokenizer)
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    size = max(cfg.vocab_size, max(by_id) + 1)
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    if any(m.count(" ") != 1 for m in merges):
        raise SelfSFTError("GGUF export cannot write this tokenizer's merges: a merged piece contains a space")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_tokenizer_pre(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    def first(*values: Any) -> int | None:
        for v in values:
            v = v[0] if isinstance(v, (list, tuple)) and v else v
            if isinstance(v, int):
                return v
        return None

    # The model's own ids first: the end of a reply is the model's (generation) eos, e.g. <|im_end|>.
    ids = {
        "bos": first(cfg.bos_token_id, tokenizer.bos_token_id),
        "eos": first(getattr(gen, "eos_token_id", None), cfg.eos_token_id, tokenizer.eos_token_id),
        "unk": first(tokenizer.unk_token_id),
        "pad": first(getattr(cfg, "pad_token_id", None), getattr(gen, "pad_token_id", None), tokenizer.pad_token_id),
    }
    for kind, value in ids.items():
        if value is not None:
            getattr(writer, f"add_{kind}_token_id")(value)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(bool((data.get("pre_tokenizer") or {}).get("add_prefix_space", False)))
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    if template:
        writer.add_chat_template(template)


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for its RoPE (pairs of halves interleaved per head)."""
    rows, rest = weight.shape[0], weight.shape[1:]
    return weight.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def _tensors(model: Any):  # noqa: ANN202 -- Iterator[tuple[str, np.ndarray]]
    cfg = model.config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name == "model.embed_tokens.weight":
            yield "token_embd.weight", array
        elif hf_name == "model.norm.weight":
            yield "output_norm.weight", array
        elif hf_name == "lm_head.weight":
            if not tied:
                yield "output.weight", array
        elif hf_name.startswith("model.layers.") and hf_name.endswith(".weight"):
            block, part = hf_name[len("model.layers."):-len(".weight")].split(".", 1)
            if part not in _LAYER:
                raise SelfSFTError(f"GGUF export supports {SUPPORTED}; this model has a tensor {hf_name} it cannot map")
            if part == "self_attn.q_proj":
                array = _permute(array, cfg.num_attention_heads)
            elif part == "self_attn.k_proj":
                array = _permute(array, cfg.num_key_value_heads or cfg.num_attention_heads)
            yield f"blk.{block}.{_LAYER[part]}.weight", array
        else:
            raise SelfSFTError(f"GGUF export supports {SUPPORTED}; this model has a tensor {hf_name} it cannot map")


def _add_tensor(writer: gguf.GGUFWriter, name: str, array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> None:
    if array.ndim == 1 or qtype == Q.F32:
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    elif qtype == Q.F16 or (qtype == Q.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]):
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
