"""One freeze configuration of bench-train, in PyTorch + transformers, for the side-by-side table.

Usage: python train_step.py MODEL_DIR CONFIG STEPS BATCH SEQ ATTENTION [PRECISION]
Prints one JSON line: {"name", "median_ms", "min_ms", "peak_rss", "trainable", "threads", "path", "first_loss"}. Same model files, same shapes (f32, AdamW), same
trainable sets as FreezeTune's plans for the named configurations; ATTENTION is transformers' `eager` or `sdpa`
(its default); PRECISION `bf16` runs the forward pass under torch.autocast("cpu", dtype=torch.bfloat16), as
PyTorch's CPU mixed precision does (f32 weights, bf16 matmuls); `f32`, the default, does not.
"""
import contextlib
import importlib.util
import json
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

def trainable(name: str, config: str, model_config) -> bool:
    layers = model_config.num_hidden_layers
    in_layer = name.startswith("model.layers.")
    layer = int(name.split(".")[2]) if in_layer else None
    if config == "full attention layers":
        kinds = getattr(model_config, "layer_types", None) or ["full_attention"] * layers
        return in_layer and kinds[layer] == "full_attention"
    if config == "full":
        return True
    if config == "all layers":
        return in_layer
    if config == "top 2":
        return in_layer and layer >= layers - 2
    if config == "bottom 2":
        return in_layer and layer < 2
    if config == "layer 3":
        return in_layer and layer == 3
    raise SystemExit(f"unknown config {config}")


def main():
    model_dir, config, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch, seq, attention = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    precision = sys.argv[7] if len(sys.argv) > 7 else "f32"
    if precision not in ("f32", "bf16"):
        raise SystemExit(f"unknown precision {precision}: f32 or bf16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
    model.train()
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name, config, model.config))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    times = []
    first_loss = None
    for step in range(steps + 1):
        t = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        if step == 0:
            first_loss = loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step > 0:
            times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({
        "name": config,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trainable": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
        "path": reference_path(model),
        "first_loss": first_loss,
    }))


def reference_path(model) -> str:
    """Which implementation transformers ran for a Gated DeltaNet model: without Hub kernels requested (the bench
    requests none), the original packages where installed (flash-linear-attention for the delta rule,
    causal-conv1d for the convolution), else its plain-PyTorch fallbacks; "" for models without such layers."""
    if "linear_attention" not in (getattr(model.config, "layer_types", None) or []):
        return ""
    rule = "fla" if importlib.util.find_spec("fla") else "torch_chunk_gated_delta_rule"
    conv = "causal_conv1d" if importlib.util.find_spec("causal_conv1d") else "F.conv1d"
    return f"delta rule: {rule}, convolution: {conv}"


if __name__ == "__main__":
    main()
