"""The flows a GPU must pass, run through the `freezetune` binary exactly as a user runs it (scripts/gpu-check.sh
builds it and calls this):

1. parity: the reference llama trained through `freezetune train` against PyTorch's recorded answers
   (tests/fixtures/reference/parity.json): step-1 loss and global gradient norm within 1e-4 (rel) in f32, the
   SGD and AdamW 3-step loss trajectories within 1e-4, and the same in bf16 within 2e-2; then every family's tiny
   model (tests/fixtures/reference/families.json, hybrids included) in f32: 3 SGD losses and the step-1 gradient
   norm within 1e-4 of transformers'; and gpt-oss's MXFP4 experts held in their blocks on the device;
2. the freeze mask on the exported checkpoint: frozen tensors byte-identical, trainable ones changed, every dtype
   kept;
3. a side-by-side training benchmark against PyTorch: top 4 / bottom 4 / full, median step time and peak memory,
   FreezeTune / PyTorch. On CUDA: a Qwen2.5-0.5B-shaped random model in bf16, batch 8 x 1024. On the CPU: the
   reference llama, batch 2 x 32 (PyTorch's side only where torch is installed).

Standard library only (PyTorch and transformers are used where present). Prints a report; writes JSON to --out.
Exit status 1 when a parity or mask check fails.
"""
import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAILURES = []


def check(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


# --- safetensors, read with the standard library ----------------------------------------------------------------

def tensors(path):
    """name -> (dtype, bytes) of a single-file safetensors checkpoint."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    return {
        k: (v["dtype"], data[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
        for k, v in header.items() if k != "__metadata__"
    }


# --- running freezetune -----------------------------------------------------------------------------------------

def write_run(dir, model, data, device, dtype, freeze, training, cutoff):
    dir.mkdir(parents=True, exist_ok=True)
    text = (
        f'[model]\npath = "{model}"\ndtype = "{dtype}"\n{freeze}\n'
        f'[data]\ntrain = "{data}"\nformat = "tokenized"\ncutoff_len = {cutoff}\n'
        f'[training]\n{training}\n[runtime]\ndevice = "{device}"\n[output]\ndir = "{dir / "run"}"\n'
    )
    (dir / "run.toml").write_text(text)
    return dir / "run.toml"


def device_used_bytes():
    """Memory in use on GPU 0 as a whole: nvidia-smi, else the CUDA API through PyTorch (a sandbox may show [N/A])."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True).stdout.strip()
    if out.isdigit():
        return int(out) * 2**20
    try:
        import torch
        free, total = torch.cuda.mem_get_info(0)
        return total - free
    except Exception:
        return None


class MemoryPoll:
    """Peak GPU memory of one process (nvidia-smi's per-process figure every 50 ms; where it has none, the GPU's
    used memory less what was in use before the process started), or its peak RSS on the CPU."""

    def __init__(self, pid, gpu):
        self.pid, self.gpu, self.peak, self.stop = pid, gpu, 0, False
        self.device_peak, self.source = 0, "rss"
        self.baseline = device_used_bytes() if gpu else None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def per_process(self):
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) == 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                return int(parts[1]) * 2**20
        return None

    def run(self):
        while not self.stop:
            if self.gpu:
                mine = self.per_process()
                if mine is not None:
                    self.peak = max(self.peak, mine)
                used = device_used_bytes()
                if used is not None and self.baseline is not None:
                    self.device_peak = max(self.device_peak, used - self.baseline)
            else:
                try:
                    for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                except OSError:
                    pass
            time.sleep(0.05)

    def finish(self):
        self.stop = True
        self.thread.join()
        if self.gpu:
            self.source = "nvidia-smi per process" if self.peak else "device used - baseline"
            if not self.peak:
                self.peak = self.device_peak
        elif not self.peak:
            # No /proc (macOS: Metal shares the host's memory): the largest child's peak RSS so far, in bytes there.
            import resource
            self.source = "rusage of children"
            self.peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return self.peak


def run_measured(cmd, gpu, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    poll = MemoryPoll(proc.pid, gpu)
    out, err = proc.communicate()
    peak = poll.finish()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err[-4000:]}")
    return out, err, peak, poll.source


def train(bin, config, gpu=False):
    out, err, peak, source = run_measured([bin, "train", "--config", str(config)], gpu)
    run = Path(config).parent / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "loss" in m]
    return {"steps": steps, "final": Path(out.strip().splitlines()[-1]), "run": run, "peak": peak,
            "peak_source": source, "log": err}


# --- 1 + 2: parity and the freeze mask ---------------------------------------------------------------------------

# Three optimizer steps as the references took them: both rows in one batch, in order, a constant rate, no clipping.
EXACT_3_STEPS = 'batch_size = 2\nshuffle = false\nlr_scheduler = "constant"\nmax_grad_norm = 0\nmax_steps = 3'
SGD = 'optimizer = "sgd"\nlearning_rate = 0.1'


def train_checked(bin, config, device, what):
    """The run's result, or None after a failed check naming `what` when `freezetune train` fails."""
    try:
        return train(bin, config, device.startswith("cuda"))
    except SystemExit as e:
        check(False, f"{what}: training ran ({e})")
        return None


def parity(bin, device, work):
    ref = json.loads((FIXTURES / "reference" / "parity.json").read_text())["models"]["llama"]
    data = work / "parity.jsonl"
    data.write_text("\n".join(json.dumps({"input_ids": i, "labels": l})
                              for i, l in zip(ref["input_ids"], ref["labels"])))
    model = FIXTURES / "models" / "llama"
    freeze = "[freeze.llamafactory]\nfreeze_trainable_layers = 2"
    cases = [
        ("sgd", SGD),
        ("adamw", 'optimizer = "adamw"\nlearning_rate = 1e-3\nweight_decay = 0.01\nno_decay_for_bias_and_norm = false'),
    ]
    report = {}
    for dtype, tol in (("f32", 1e-4), ("bf16", 2e-2)):
        for name, opt in cases:
            config = write_run(work / f"parity-{name}-{dtype}", model, data, device, dtype, freeze,
                               f"{EXACT_3_STEPS}\n{opt}", 64)
            r = train_checked(bin, config, device, f"{dtype} {name}")
            if r is None:
                continue
            losses = [s["loss"] for s in r["steps"]]
            want = ref[name]["loss_at_step"]
            worst = max(rel(a, b) for a, b in zip(losses, want))
            check(len(losses) == 3 and worst < tol,
                  f"{dtype} {name}: 3-step losses within {tol:g} of PyTorch (worst {worst:.2e})")
            g = r["steps"][0]["grad_norm"]
            check(rel(g, ref["grad_l2_total"]) < tol,
                  f"{dtype} {name}: step-1 gradient norm {g:.6f} vs PyTorch {ref['grad_l2_total']:.6f}")
            check(rel(losses[0], ref["loss"]) < tol, f"{dtype} {name}: step-1 loss {losses[0]:.6f} vs {ref['loss']:.6f}")
            report[f"{name}-{dtype}"] = {"losses": losses, "pytorch": want, "grad_norm": g, "worst_rel": worst}
            if name == "adamw":
                freeze_mask(model, r, f"{dtype} {name}")
    return report


def family_parity(bin, device, work):
    """Every family's tiny model (tests/fixtures/models, the cases of tests/fixtures/reference/families.json, which
    transformers wrote) trained through `freezetune train` in f32 with every text tensor trainable: 3 plain SGD steps'
    losses and the step-1 gradient norm against transformers' within 1e-4. The Rust tests check the same on the CPU
    through the library; this runs the user's path on the device: sliding windows, softcaps, q/k norms, biases,
    LFM2's convolutions, Qwen3.5's Gated DeltaNet and gated attention."""
    cases = json.loads((FIXTURES / "reference" / "families.json").read_text())["cases"]
    vision = ("visual", "vision_tower", "multi_modal_projector", "embed_vision", "audio_tower", "embed_audio")
    report = {}
    for case, ref in cases.items():
        model = FIXTURES / "models" / case
        if not model.is_dir():
            # The GPU bundle carries only some families (scripts/gpu-bundle.sh: the 64 MiB limit).
            print(f"  skip  {case}: its model is not in this copy of the fixtures", flush=True)
            report[case] = {"skipped": "model not carried"}
            continue
        layout = json.loads(subprocess.run([bin, "inspect", str(model), "--json"], capture_output=True, text=True,
                                           check=True).stdout)
        extra = [m["path"] for m in layout["non_layer_modules"] if not any(v in m["path"] for v in vision)]
        freeze = "[freeze]\nall_layers = true\nextra = [" + ", ".join(f'"{e}"' for e in extra) + "]"
        data = work / f"family-{case}.jsonl"
        data.write_text("\n".join(json.dumps({"input_ids": i, "labels": i}) for i in ref["input_ids"]))
        cutoff = max(len(i) for i in ref["input_ids"])
        config = write_run(work / f"family-{case}", model, data, device, "f32", freeze, f"{EXACT_3_STEPS}\n{SGD}",
                           cutoff)
        r = train_checked(bin, config, device, case)
        if r is None:
            continue
        losses = [s["loss"] for s in r["steps"]]
        worst = max((rel(a, b) for a, b in zip(losses, ref["losses"])), default=float("inf"))
        g = r["steps"][0]["grad_norm"] if r["steps"] else float("nan")
        check(len(losses) == 3 and worst < 1e-4 and rel(g, ref["grad_l2_total"]) < 1e-4,
              f"{case}: 3 SGD losses within 1e-4 of transformers' (worst {worst:.1e}), step-1 gradient norm "
              f"{g:.6f} vs {ref['grad_l2_total']:.6f}")
        report[case] = {"losses": losses, "transformers": ref["losses"], "grad_norm": g, "worst_rel": worst}
    return report


def held_in_blocks(bin, device, work, model_name, ids_case, layers, want, word):
    """A checkpoint whose frozen tensors stay in their own blocks on the device: `layers` train, the rest are
    rebuilt by table lookups each pass. Each step's loss is transformers' (`want`) and the log says `word`."""
    model = FIXTURES / "models" / model_name
    if not model.is_dir():
        print(f"  skip  {model_name}: its model is not in this copy of the fixtures", flush=True)
        return {"skipped": "model not carried"}
    ids = json.loads((FIXTURES / "reference" / "families.json").read_text())["cases"][ids_case]["input_ids"]
    data = work / f"{model_name}.jsonl"
    data.write_text("\n".join(json.dumps({"input_ids": i, "labels": i}) for i in ids))
    config = write_run(work / model_name, model, data, device, "f32", f'[freeze]\nlayers = "{layers}"',
                       f"{EXACT_3_STEPS}\n{SGD}", max(len(i) for i in ids))
    r = train_checked(bin, config, device, model_name)
    if r is None:
        return {"failed": True}
    got = [s["loss"] for s in r["steps"]][:len(want)]
    worst = max((rel(a, b) for a, b in zip(got, want)), default=float("nan"))
    check(len(got) == len(want) and worst < 1e-4 and word in r["log"],
          f"{model_name}: {len(want)} losses within 1e-4 of transformers' (worst {worst:.1e}), frozen tensors held "
          f"as {word}")
    return {"losses": got, "transformers": want}


def mxfp4_packed(bin, device, work):
    """gpt-oss as released, its experts in MXFP4 (tests/fixtures/models/gpt_oss_mxfp4): the top layer trains and the
    bottom layer's experts stay in their blocks on the device. The first step's loss is the loss transformers
    computes on the folder (tests/fixtures/reference/mxfp4.json)."""
    want = json.loads((FIXTURES / "reference" / "mxfp4.json").read_text())["loss"]
    return held_in_blocks(bin, device, work, "gpt_oss_mxfp4", "gpt_oss", "1", [want], "MXFP4")


def fp8_held(bin, device, work):
    """Qwen3 MoE and DeepSeek-V3 as FP8 builds release them (tests/fixtures/models/*_fp8; DeepSeek's latent
    projections end in partial blocks): the bottom layer trains and the layers above stay in their e4m3 codes and
    block scales on the device, the backward pass crossing them. Three SGD losses are PyTorch's
    (tests/fixtures/reference/fp8.json)."""
    cases = json.loads((FIXTURES / "reference" / "fp8.json").read_text())["cases"]
    return {case: held_in_blocks(bin, device, work, case, r["family"], "0", r["losses_layer_0"], "FP8")
            for case, r in cases.items()}


def freeze_mask(model, r, what):
    plan = json.loads((r["run"] / "freeze_plan.json").read_text())
    trainable = set(plan["trainable"])
    before, after = tensors(model / "model.safetensors"), tensors(r["final"] / "model.safetensors")
    check(before.keys() == after.keys(), f"{what}: every tensor exported")
    bad = [n for n, (dt, b) in before.items()
           if after[n][0] != dt or ((after[n][1] == b) == (n in trainable))]
    check(not bad, f"{what}: {len(before) - len(trainable)} frozen tensors byte-identical, "
          f"{len(trainable)} trainable changed, dtypes kept" + (f" (wrong: {bad[:3]})" if bad else ""))


# --- 3: the benchmark --------------------------------------------------------------------------------------------

def bench_models(device, work):
    """The benchmark's models: (label, folder, batch, seq, dtype, configs). On CUDA a Qwen2.5-0.5B-shaped random model
    in bf16 at 8 x 1024, and the 31M llama of bench-train in f32 at 2 x 1024 (the shape docs/memory.md measures on
    the CPU); the reference llama in f32 at 2 x 32 elsewhere."""
    if not device.startswith("cuda"):
        return [("reference llama", FIXTURES / "models" / "llama", 2, 32, "f32", list(FREEZE))]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    qwen = work / "qwen2.5-0.5b-shaped"
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(qwen)
    small = work / "llama-31m"
    config = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(small)
    return [("Qwen2.5-0.5B-shaped", qwen, 8, 1024, "bf16", list(FREEZE)),
            ("llama 31M", small, 2, 1024, "f32", ["full", "top 4"])]


FREEZE = {
    "top 4": "[freeze]\ntop = 4",
    "bottom 4": "[freeze]\nbottom = 4",
    "full": '[freeze]\nall_layers = true\nextra = ["embed_tokens", "norm"]',
}


def bench(bin, device, work, steps):
    results = []
    for m in bench_models(device, work):
        try:
            results.append(bench_one(bin, device, work, steps, *m))
        except SystemExit as e:
            check(False, f"benchmark {m[0]} ran ({e})")
    return results


def bench_one(bin, device, work, steps, label, model, batch, seq, dtype, names):
    cfg = json.loads((model / "config.json").read_text())
    vocab = cfg["vocab_size"]
    data = work / f"bench-{model.name}.jsonl"
    rows = [[(r * 7919 + i * 104729 + 13) % (vocab - 1) + 1 for i in range(seq)] for r in range(batch * (steps + 1))]
    data.write_text("\n".join(json.dumps({"input_ids": r, "labels": r}) for r in rows))
    gpu = device.startswith("cuda")
    torch_ok = have_torch(device)
    results = []
    for name in names:
        freeze = FREEZE[name]
        if name == "full" and not cfg.get("tie_word_embeddings", False):
            freeze = freeze.replace('"norm"]', '"norm", "lm_head"]')
        training = (f'batch_size = {batch}\nshuffle = false\nmax_steps = {steps + 1}\noptimizer = "adamw"\n'
                    f'learning_rate = 1e-5\nsave_steps = 0')
        config = write_run(work / f"bench-{model.name}-{name.replace(' ', '')}", model, data, device, dtype, freeze,
                           training, seq)
        r = train(bin, config, gpu)
        elapsed = [s["elapsed_s"] for s in r["steps"]]
        ours = statistics.median([(b - a) * 1e3 for a, b in zip(elapsed, elapsed[1:])])
        row = {"name": name, "freezetune_ms": ours, "freezetune_peak": r["peak"], "peak_source": r["peak_source"],
               "trainable": json.loads((r["run"] / "freeze_plan.json").read_text())["trainable_params"]}
        if torch_ok:
            plan = r["run"] / "freeze_plan.json"
            out, _, peak, _ = run_measured([sys.executable, str(ROOT / "scripts" / "gpu_check_torch.py"), str(model),
                                            str(plan), str(data), device, dtype, str(batch), str(steps)], gpu)
            theirs = json.loads(out.strip().splitlines()[-1])
            row.update({"pytorch_ms": theirs["median_ms"], "pytorch_peak": peak,
                        "pytorch_max_reserved": theirs.get("max_reserved"),
                        "time_ratio": ours / theirs["median_ms"], "memory_ratio": r["peak"] / max(peak, 1)})
        results.append(row)
    return {"label": label, "model": str(model), "batch": batch, "seq": seq, "dtype": dtype, "rows": results,
            "torch": torch_ok}


def have_torch(device):
    code = "import torch, transformers" + ("; assert torch.cuda.is_available()" if device.startswith("cuda") else "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def print_bench(b):
    print(f"\nbenchmark: {b['label']} ({b['dtype']}, batch {b['batch']} x {b['seq']}, AdamW; peak memory: "
          f"{b['rows'][0].get('peak_source', '-')})")
    print(f"  {'config':<10} {'trainable':>12} {'FreezeTune ms':>14} {'PyTorch ms':>11} {'time ratio':>10} "
          f"{'FT peak MiB':>12} {'PT peak MiB':>12} {'mem ratio':>10}")
    for r in b["rows"]:
        pt = lambda k, f: format(r[k], f) if k in r else "-"
        print(f"  {r['name']:<10} {r['trainable']:>12} {r['freezetune_ms']:>14.1f} {pt('pytorch_ms', '.1f'):>11} "
              f"{pt('time_ratio', '.2f'):>10} {r['freezetune_peak'] / 2**20:>12.0f} "
              f"{(r['pytorch_peak'] / 2**20 if 'pytorch_peak' in r else float('nan')):>12.0f} "
              f"{pt('memory_ratio', '.2f'):>10}")
    if not b["torch"]:
        print("  (PyTorch is not installed here: FreezeTune's side only)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "test-results" / "gpu-check"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="freezetune-gpu-check-"))
    try:
        print(f"parity and freeze mask on {args.device} ({args.bin})")
        report = {"device": args.device, "parity": parity(args.bin, args.device, work)}
        print(f"every family against transformers on {args.device}")
        report["families"] = family_parity(args.bin, args.device, work)
        report["mxfp4"] = mxfp4_packed(args.bin, args.device, work)
        report["fp8"] = fp8_held(args.bin, args.device, work)
        report["bench"] = bench(args.bin, args.device, work, args.steps)
        for b in report["bench"]:
            print_bench(b)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.device.replace(':', '')}.json").write_text(json.dumps(report, indent=2))
    print(f"\nreport: {out / (args.device.replace(':', '') + '.json')}")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
