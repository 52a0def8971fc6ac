"""A random model that transformers makes from a config.json, for bench-train's families that FreezeTune's own
synthetic writer does not lay out (Qwen3.5's Gated DeltaNet layers): transformers' own initialisation, saved as
f32 safetensors.

Usage: python make_model.py CONFIG_JSON OUT_DIR
Writes OUT_DIR.partial first and renames it, so an interrupted run leaves no half-written model behind.
"""
import json
import os
import shutil
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    config_path, out = sys.argv[1], sys.argv[2]
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    with open(config_path) as f:
        raw = json.load(f)
    with open(os.path.join(partial, "config.json"), "w") as f:
        json.dump(raw, f)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(partial)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(partial)
    os.rename(partial, out)


if __name__ == "__main__":
    main()
