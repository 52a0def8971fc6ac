"""Rewrites a glm4moe GGUF file as llama.cpp's converter writes GLM-4.5 as released: one more block after the last,
the multi-token-prediction (NextN) layer, with a decoder layer's tensors (copies of the last layer's, halved) and
its own `nextn.*` tensors, `block_count` counting it and `nextn_predict_layers` = 1. Written with llama.cpp's own
`gguf` package, independently of FreezeTune.

Usage: add_nextn.py IN.gguf OUT.gguf  (prints {"layer": N} as JSON)
"""
import json
import sys

import gguf
import numpy as np


def main():
    src, dst = sys.argv[1:3]
    reader = gguf.GGUFReader(src)
    arch = "glm4moe"
    blocks = int(reader.fields[f"{arch}.block_count"].contents())
    hidden = int(reader.fields[f"{arch}.embedding_length"].contents())
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == f"{arch}.block_count":
            value = blocks + 1
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    writer.add_uint32(f"{arch}.nextn_predict_layers", 1)
    tensors = [(t.name, np.array(t.data), t.tensor_type) for t in reader.tensors]
    last = f"blk.{blocks - 1}."
    vocab = next(np.array(t.data).shape[0] for t in reader.tensors if t.name == "token_embd.weight")
    extra = [(f"blk.{blocks}." + name[len(last):], (data * 0.5).astype(data.dtype), kind)
             for name, data, kind in tensors if name.startswith(last)]
    f32 = gguf.GGMLQuantizationType.F32
    nextn = {
        "eh_proj.weight": np.full((hidden, 2 * hidden), 0.01, np.float32),
        "embed_tokens.weight": np.full((vocab, hidden), 0.02, np.float32),
        "enorm.weight": np.full(hidden, 1.5, np.float32),
        "hnorm.weight": np.full(hidden, 0.5, np.float32),
        "shared_head_head.weight": np.full((vocab, hidden), 0.03, np.float32),
        "shared_head_norm.weight": np.full(hidden, 2.0, np.float32),
    }
    extra += [(f"blk.{blocks}.nextn.{name}", data, f32) for name, data in nextn.items()]
    for name, data, kind in tensors + extra:
        if kind not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise SystemExit(f"{name} is {kind.name}: only f32/f16 files are rewritten")
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(json.dumps({"layer": blocks}))


if __name__ == "__main__":
    main()
