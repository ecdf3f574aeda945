"""The three networks of Zakharov et al. 2019 and a container that saves and loads them.

- `Embedder` E(x, y; φ) -> ê                       (embedder.py, sec. 3.1)
- `Generator` G(y, ê; ψ, P), ψ̂ = P·ê               (generator.py, sec. 3.1)
- `Discriminator` D(x, y, i; θ, W, w0, b)           (discriminator.py, sec. 3.1)
- their shared building blocks                      (blocks.py, sec. 3.4)
- `TalkingHeadModel` holds E, G, D and the `Config`; `save` / `load` use safetensors with the config
  JSON in the file's header, so `TalkingHeadModel.load(path)` rebuilds the model with no other file
                                                    (talking_head.py)
"""

from __future__ import annotations

from tkh.models.discriminator import Discriminator
from tkh.models.embedder import Embedder
from tkh.models.generator import Generator
from tkh.models.talking_head import (
    FORMAT,
    PAPER_COUNTS,
    REIMPL_COUNTS,
    TalkingHeadModel,
    config_differences,
    describe,
    param_counts,
)

__all__ = ["Embedder", "Generator", "Discriminator", "TalkingHeadModel", "describe", "param_counts", "FORMAT",
           "PAPER_COUNTS", "REIMPL_COUNTS", "config_differences"]
