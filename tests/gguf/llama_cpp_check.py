"""What llama.cpp and its `gguf` reader make of a GGUF file, as JSON on stdout, for FreezeTune's GGUF tests.

Usage: llama_cpp_check.py FILE.gguf REQUEST.json, where the request is
  {"ids": [...], "greedy": N, "text": "..."}:
the file's metadata and tensors as the `gguf` package reads them, llama.cpp's logits for every position of
`ids` (evaluated in one batch), its greedy continuation of `ids` by N tokens, and its tokenization of `text`
(no BOS, special tokens not parsed).
"""
import hashlib
import json
import sys

import gguf
import llama_cpp
import numpy as np


def reader_view(path):
    r = gguf.GGUFReader(path)
    meta = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        if name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            meta[name] = len(field.data)
            continue
        try:
            meta[name] = field.contents()
        except Exception as e:  # a value the reader cannot show is itself a finding
            meta[name] = f"<unreadable: {e}>"
    tensors = {
        t.name: {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape.tolist())],
            "sha256": hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest(),
        }
        for t in r.tensors
    }
    return meta, tensors


def main():
    path, request = sys.argv[1], json.load(open(sys.argv[2]))
    meta, tensors = reader_view(path)
    # An f32 KV cache: the default f16 one rounds keys and values, which alone moves logits of models with large
    # activations past the checks' 1e-3.
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=256, logits_all=True, verbose=True, n_threads=2, seed=0,
                          type_k=0, type_v=0)
    ids = request["ids"]
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64).tolist()
    greedy = []
    if request.get("greedy"):
        llm.reset()
        for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            greedy.append(int(tok))
            if len(greedy) >= request["greedy"]:
                break
    text_ids = llm.tokenize(request.get("text", "").encode("utf-8"), add_bos=False, special=False)
    json.dump({"metadata": meta, "tensors": tensors, "logits": logits, "greedy": greedy, "text_ids": text_ids}, sys.stdout)


if __name__ == "__main__":
    main()
