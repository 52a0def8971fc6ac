"""Axolotl 0.19's own reading of a FreezeTune bundle, for crates/cli/tests/export_run.rs.

For each bundle folder given: `load_cfg` validates config.yml as `axolotl train` does (the pydantic schema and
the checks after it), then the model is built from its config.json with the class the checkpoint names, and
frozen by Axolotl's `freeze_layers_except` with the validated `unfrozen_parameters`, as Axolotl's train.py does.
Prints one line per bundle, `REPORT ` and a JSON object: the trainable parameter names and count, and the validated
keys the test checks (Axolotl prints the validated config as JSON too).
"""

import json
import os
import sys

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402
from axolotl.cli.config import load_cfg  # noqa: E402
from axolotl.utils.freeze import freeze_layers_except  # noqa: E402


def check(bundle):
    cwd = os.getcwd()
    os.chdir(bundle)  # the config's paths (data/, output/) are relative to the bundle
    try:
        cfg = load_cfg("config.yml")
    finally:
        os.chdir(cwd)
    config = transformers.AutoConfig.from_pretrained(cfg.base_model)
    model_class = getattr(transformers, config.architectures[0])
    model = model_class(config)  # the names and shapes are the checkpoint's; the values do not matter here
    freeze_layers_except(model, cfg.unfrozen_parameters)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable": trainable,
        "trainable_params": count,
        "sequence_len": cfg.sequence_len,
        "micro_batch_size": cfg.micro_batch_size,
        "learning_rate": cfg.learning_rate,
        "datasets": [d["type"] for d in cfg.datasets],
    }


for path in sys.argv[1:]:
    print("REPORT " + json.dumps(check(path)), flush=True)
