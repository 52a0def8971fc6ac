"""Quantizes a GGUF file with llama.cpp's own quantizer (llama_model_quantize, through llama-cpp-python): the type
mix llama.cpp itself picks for each tensor of that file.

Usage: quantize_gguf.py IN.gguf OUT.gguf TYPE  (TYPE: q8_0, q4_k_m; prints {} as JSON)
"""
import json
import sys

import llama_cpp

FTYPE = {"q8_0": 7, "q4_k_m": 15}


def main(src, dest, kind):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPE[kind]
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dest.encode(), params)
    assert rc == 0, f"llama_model_quantize returned {rc}"
    json.dump({}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:4])
