"""Writes a Hugging Face folder as GGUF with llama.cpp's own `gguf` package, independently of FreezeTune: its
tensor-name map, its quantizers (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1), and llama.cpp's quantizer
(llama_model_quantize, through llama-cpp-python) for the k-quant mixes (q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k).
Follows convert_hf_to_gguf.py for what matters to a decoder: llama's q/k permutation, gemma's `1 + weight`
norms, byte-level BPE vocabulary with merges, special ids and the chat template.

Usage: write_gguf.py MODEL_DIR OUT.gguf TYPE  (prints {"types": {...}} as JSON)
"""
import json
import os
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file

ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma": "gemma"}
DIRECT = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1",
          "q5_0": "Q5_0", "q5_1": "Q5_1"}
LLAMA_FTYPE = {"q2_k": 10, "q3_k_m": 12, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_weights(model_dir):
    out = {}
    for f in sorted(os.listdir(model_dir)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(model_dir, f)))
    return out


def vocab(model_dir, w, config):
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    tcfg = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
    n = config["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for t, i in tok["model"]["vocab"].items():
        tokens[i], types[i] = t, gguf.TokenType.NORMAL
    by_text = dict(tok["model"]["vocab"])
    for a in tok["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
        by_text[a["content"]] = a["id"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for name, add in [("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id)]:
        text = tcfg.get(f"{name}_token")
        tid = by_text.get(text) if text else config.get(f"{name}_token_id")
        if tid is not None:
            add(tid)
    w.add_add_bos_token(False)
    template = os.path.join(model_dir, "chat_template.jinja")
    if os.path.exists(template):
        w.add_chat_template(open(template).read())


def write(model_dir, out, qtype):
    config = json.load(open(os.path.join(model_dir, "config.json")))
    arch_name = ARCH[config["model_type"]]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    n_layers = config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    names = gguf.get_tensor_name_map(arch, n_layers)
    w = gguf.GGUFWriter(out, arch_name)
    w.add_name("reference")
    w.add_context_length(config.get("max_position_embeddings", 4096))
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(n_layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    rope = config.get("rope_parameters") or {}
    w.add_rope_freq_base(config.get("rope_theta", rope.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if arch_name == "llama":
        w.add_vocab_size(config["vocab_size"])
    vocab(model_dir, w, config)
    direct = DIRECT.get(qtype, "F32")
    w.add_file_type({"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9}[direct])
    types = {}
    for hf, data in load_weights(model_dir).items():
        data = data.astype(np.float32)
        if arch_name == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, heads)
        if arch_name == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, kv)
        if arch_name == "gemma" and hf.endswith("norm.weight"):
            data = data + 1
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"no GGUF name for {hf}"
        t = gguf.GGMLQuantizationType[direct] if data.ndim >= 2 and not name.endswith("_norm.weight") else gguf.GGMLQuantizationType.F32
        if t == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            q = gguf.quants.quantize(data, t)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=t)
        types[t.name] = types.get(t.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if qtype in LLAMA_FTYPE:
        import llama_cpp
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPE[qtype]
        params.nthread = 2
        tmp = out + ".f32"
        os.replace(out, tmp)
        rc = llama_cpp.llama_model_quantize(tmp.encode(), out.encode(), params)
        os.remove(tmp)
        assert rc == 0, f"llama_model_quantize returned {rc}"
        types = {}
        for t in gguf.GGUFReader(out).tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    json.dump({"types": types}, sys.stdout)


if __name__ == "__main__":
    write(sys.argv[1], sys.argv[2], sys.argv[3])
