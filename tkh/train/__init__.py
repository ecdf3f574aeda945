"""Meta-learning of E, G and D on many talking-head videos (Zakharov et al. 2019, sec. 3.2).

    from tkh.config import load_config
    from tkh.train import train, plot_losses, Callbacks

    result = train(load_config("tiny"), "cache64/", "runs/tiny", callbacks=Callbacks(on_step=print))
    plot_losses("runs/tiny")

or ``tkh train --config configs/small.yaml --data CACHE --out runs/small [--steps N] [--resume]``, and
``torchrun --nproc_per_node G -m tkh.cli train ...`` for several GPUs.

- `tkh.train.loop`: `train` (batch -> step -> log -> checkpoint), callbacks and results.
- `tkh.train.step`: the adversarial step as phases (`make_phases`, `run_step`), shared with fine-tuning.
- `tkh.train.objectives`: what the phases minimise: `MetaStep` (sec. 3.2), `FineTuneStep` (sec. 3.3).
- `tkh.train.setup`: everything built before the first step; `tkh.train.rundir`: the run folder's files.
- `tkh.train.batches`: resumable batches of episodes; `tkh.train.signals`: SIGTERM / Ctrl-C stops.
- `tkh.train.checkpoint`: atomic checkpoints (safetensors weights + weights_only-loadable state), resume.
- `tkh.train.logging`: log.csv, TensorBoard (optional), `plot_losses`; `tkh.train.samples`: sample grids.
- `tkh.train.distributed`: torchrun / DDP setup, and why D's per-video W needs no special handling.
"""

from __future__ import annotations

import argparse

import yaml

from tkh.config import Config, load_config
from tkh.errors import ConfigError
from tkh.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from tkh.train.logging import plot_losses, read_log
from tkh.train.loop import Callbacks, MetaStep, Phase, StepInfo, TrainResult, make_phases, train
from tkh.train.samples import sample_grid

__all__ = [
    "Callbacks", "MetaStep", "Phase", "StepInfo", "TrainResult", "TrainState", "latest_checkpoint",
    "config_from_cli", "load_checkpoint", "make_phases", "plot_losses", "read_log", "sample_grid", "save_checkpoint",
    "train", "train_from_cli",
]


def config_from_cli(args: argparse.Namespace) -> Config:
    """`tkh train`'s config: the config file, then --set SECTION.KEY=VALUE, then --steps / --holdout /
    --max-minutes / --device (a function of its own so that what the options make of it can be checked)."""
    cfg = load_config(args.config)
    sets: dict[str, dict] = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.batch_size=2")
        sets.setdefault(section, {})[name] = yaml.safe_load(value)
    if sets:
        cfg = cfg.replace(**sets)  # ConfigError (one line) for an unknown section or key
    overrides = {}
    if getattr(args, "steps", None) is not None:
        overrides["steps"] = args.steps
    if getattr(args, "holdout", None):
        overrides["holdout"] = list(args.holdout)
    if getattr(args, "max_minutes", None) is not None:
        overrides["max_minutes"] = args.max_minutes
    if getattr(args, "device", None):
        overrides["device"] = args.device
    if overrides:
        cfg = cfg.replace(train=overrides)
    return cfg


def train_from_cli(args: argparse.Namespace) -> TrainResult:
    """`tkh train`: `config_from_cli`, then `train` (resuming with --resume), then one line on how it ended."""
    cfg = config_from_cli(args)
    resume = bool(getattr(args, "resume", False))
    result = train(cfg, args.data, args.out, resume=resume)
    if resume and result.steps_run == 0 and result.step >= cfg.train.steps:
        print(f"tkh train: nothing to do, the run is already complete at step {result.step} (train.steps "
              f"{cfg.train.steps}); checkpoint {result.checkpoint}; pass a larger --steps to continue it")
    else:
        print(f"tkh train: stopped ({result.stopped}) at step {result.step} after {result.steps_run} steps in "
              f"{result.seconds:.0f} s; checkpoint {result.checkpoint}; log {result.log}")
    return result
