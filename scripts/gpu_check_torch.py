"""PyTorch's side of gpu_check.py's benchmark: the same model folder, the same trainable tensors (FreezeTune's
freeze_plan.json), the same rows, AdamW, and the same precision recipe — frozen weights in the compute dtype,
trainable ones as f32 master weights, autocast to the compute dtype (sdpa attention, transformers' default).

Usage: python gpu_check_torch.py MODEL_DIR FREEZE_PLAN.json DATA.jsonl DEVICE DTYPE BATCH STEPS
Prints one JSON line: {"median_ms", "trainable"}.
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, plan, data, device, dtype, batch, steps = sys.argv[1:8]
    batch, steps = int(batch), int(steps)
    device = device if device.startswith("cuda") else "cpu"
    compute = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    trainable = set(json.load(open(plan))["trainable"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute, attn_implementation="sdpa").to(device)
    model.train()
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        if p.requires_grad:
            p.data = p.data.float()
            params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-5)
    rows = [json.loads(line)["input_ids"] for line in open(data)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for step in range(steps + 1):
        ids = torch.tensor(rows[step * batch:(step + 1) * batch], device=device)
        sync()
        t = time.perf_counter()
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=compute,
                            enabled=compute != torch.float32):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        sync()
        if step > 0:
            times.append((time.perf_counter() - t) * 1e3)
    reserved = torch.cuda.max_memory_reserved() if device.startswith("cuda") else None
    print(json.dumps({"median_ms": statistics.median(times), "trainable": sum(p.numel() for p in params),
                      "max_reserved": reserved}))


if __name__ == "__main__":
    main()
