"""`python tests/train_grads_runner.py CONFIG.yaml CACHE RUN_DIR GRADS.safetensors`, alone or under torchrun.

Runs the real `tkh.train.train` and records, on rank 0, the gradient of every parameter after each phase's
backward (all-reduced over the ranks under DDP) through `Callbacks.on_grads`; writes them as
"s{step}p{phase}.{name}" to GRADS, with the initial weights as "init.{name}" and the logged loss parts of
every step as "loss.{step}.{part}" (0-d tensors).
Used by tests/test_train_processes.py to compare DDP with one process.
"""

from __future__ import annotations

import os
import sys

import torch


def main(config: str, cache: str, run_dir: str, grads_path: str) -> None:
    from safetensors.torch import save_file

    from tkh.config import load_config
    from tkh.train import Callbacks, train

    out: dict[str, torch.Tensor] = {}

    def on_grads(step: int, phase: int, name: str, model: torch.nn.Module) -> None:
        if step == 1 and phase == 0:  # before the first optimiser step: the initial weights
            out.update({f"init.{n}": p.detach().float().cpu().clone() for n, p in model.named_parameters()})
        for n, p in model.named_parameters():
            if p.grad is not None:
                out[f"s{step}p{phase}.{n}"] = p.grad.detach().float().cpu().clone()

    def on_step(info) -> None:
        for k, v in info.losses.items():
            out[f"loss.{info.step}.{k}"] = torch.tensor(float(v), dtype=torch.float64)

    train(load_config(config), cache, run_dir, callbacks=Callbacks(on_step=on_step, on_grads=on_grads))
    if int(os.environ.get("RANK", "0")) == 0:  # the callbacks run on rank 0 only
        save_file(out, grads_path)


if __name__ == "__main__":
    main(*sys.argv[1:5])
