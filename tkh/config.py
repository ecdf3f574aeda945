"""Configuration as dataclasses, one per component, loaded from the YAML files in `configs/`.

Every field has a comment; defaults are the paper's where it gives one (Zakharov et al. 2019,
"Few-Shot Adversarial Learning of Realistic Neural Talking Head Models", sec. 3 and 4). The YAML
file is the only other source of values: `Config.from_yaml` maps its sections straight onto these
classes and refuses keys it does not know, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tkh.errors import ConfigError


@dataclass
class ModelConfig:
    """Sizes of E, G and D (sec. 3.2 and appendix of the paper)."""

    name: str = "small"            # label stored in checkpoints and the pretrained manifest
    image_size: int = 128          # 64, 128 or 256: resolution of frames and landmark images
    base_channels: int = 32        # width of the first residual block; the paper's 64
    max_channels: int = 256        # width cap of the deepest blocks; the paper's 512
    embed_dim: int = 256           # N, length of the embedding ê; the paper's 512
    bottleneck_size: int = 16      # spatial size of G's residual bottleneck; the paper's 16 (at 256 px)
    gen_res_blocks: int = 5        # AdaIN residual blocks in G's bottleneck; the paper's 5
    attention: bool = True         # self-attention blocks (SAGAN) in E, G and D as in the paper
    spectral_norm: bool = True     # spectral normalisation of every conv / linear (paper: all)
    landmark_channels: int = 3     # channels of the rasterized landmark image y
    pooling: str = "sum"           # global pooling at the end of E and D: "sum" (paper text? and both
                                   # re-implementations) or "mean"
    p_init_std: float = 0.002      # std of the normal init of P (ψ̂ = P·ê); small so G starts near plain IN
    w_init_std: float = 0.02       # std of the normal init of D's per-video rows W_i (w0, b start at 0)

    def __post_init__(self) -> None:
        if self.image_size not in (64, 128, 256):
            raise ConfigError(f"model.image_size must be 64, 128 or 256, got {self.image_size}")
        if self.bottleneck_size > self.image_size // 4:
            raise ConfigError(
                f"model.bottleneck_size {self.bottleneck_size} is too large for image_size "
                f"{self.image_size}: G needs at least two downsampling blocks"
            )
        if self.pooling not in ("sum", "mean"):
            raise ConfigError(f"model.pooling must be 'sum' or 'mean', got {self.pooling!r}")
        if self.bottleneck_size < 4 or self.bottleneck_size & (self.bottleneck_size - 1):
            raise ConfigError(f"model.bottleneck_size must be a power of two >= 4, got {self.bottleneck_size}")


@dataclass
class LossConfig:
    """Weights of L = L_CNT + L_ADV + L_MCH (sec. 3.2, eqs. 1-5)."""

    perceptual: str = "auto"       # "auto": an ImageNet network (VGG19, else the offline VGG16) + the face network,
                                   # whichever have real weights; or "vgg19+face", "vgg19", "vgg16+face", "vgg16",
                                   # "face", "none" (a named network that does not load is an error)
    allow_no_perceptual: bool = False  # must be set to train with pixel/feature-matching losses only
    vgg19_weight: float = 1.5e-1   # weight of the VGG19 part of L_CNT (paper v2; v1: 1e-2)
    vgg19_layers: tuple[int, ...] = (1, 6, 11, 20, 29)  # ReLU outputs of VGG19's features (paper)
    face_weight: float = 2.5e-2    # weight of the face-identity part of L_CNT (paper's VGGFace; v1: 2e-3)
    face_network: str = "dlib"     # "dlib" (ported dlib ResNet, offline) or "vggface" (user's weights)
    face_weights_path: str = ""    # local weights file of the face network ("" = its default: dlib's from
                                   # face_recognition_models; VGGFace needs the user's converted file)
    vgg19_path: str = ""           # local VGG19 state dict ("" = torchvision's, downloaded into torch hub's cache)
    vgg16_weight: float = 2.0e-1   # weight of the VGG16 part of L_CNT when VGG16 stands in for VGG19 (not in the
                                   # paper): 1.5e-1 x 1.43, the median ratio of VGG16's L1 at relu1_1..5_1 (the
                                   # paper's VGG19 choice) to its L1 at vgg16_layers on real faces (README)
    vgg16_layers: tuple[int, ...] = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS's)
    vgg16_path: str = ""           # converted VGG16 safetensors ("" = tkh's cache, made by `tkh fetch vgg16`)
    pixel_weight: float = 10.0     # L1 on pixels; not in the paper: replaces L_CNT only when no perceptual
                                   # network loads and allow_no_perceptual is set (10 ≈ λ_FM's scale)
    pixel_l1: float = 0.0          # pixel L1 added to L_CNT even when networks load; not in the paper (0). The
                                   # CPU-trained shipped weights used 10 as a stand-in for VGG19, unreachable offline
    fm_weight: float = 10.0        # λ_FM, feature matching inside L_ADV (paper: 10)
    mch_weight: float = 80.0       # λ_MCH, embedding match ‖W_i − ê_i‖₁ (paper: 80; one re-implementation 10)


@dataclass
class TrainConfig:
    """Meta-learning stage (sec. 3.2 and 4); read by `tkh.train.train`."""

    steps: int = 100_000           # generator updates (one step = d_steps_per_g D updates + one E/G update)
    batch_size: int = 8            # episodes (videos) per step, summed over all DDP ranks
    k_shots: int = 8               # K frames given to the embedder per episode (paper: 8)
    lr_eg: float = 5e-5            # Adam learning rate of E and G (paper)
    lr_d: float = 2e-4             # Adam learning rate of D, W included (paper)
    betas: tuple[float, float] = (0.0, 0.999)  # Adam betas; BigGAN-style GANs use β1 = 0
    d_steps_per_g: int = 2         # discriminator updates per generator update (paper: 2)
    amp: str = "auto"              # "auto" (CUDA: bf16; CPU: bf16 where a probe finds it faster), "bf16", "off"
    channels_last: str = "auto"    # "auto" (CUDA: on; CPU: where the probe finds it faster), "on", "off"; the
                                   # old boolean is accepted (true = on). tkh.precision decides "auto"
    compile: bool = False          # torch.compile E, G, D
    grad_checkpoint: bool = False  # recompute residual blocks in backward: less memory on small GPUs, ~30% slower
    num_workers: int = 2           # DataLoader workers (0: load episodes in the training process)
    seed: int = 0                  # seeds torch, numpy, python and the episode sampler
    log_every: int = 10            # steps between log.csv rows (each row averages the steps since the last)
    sample_every: int = 200        # steps between sample grids (samples/step_XXXXXX.png); 0 = never
    ckpt_every: int = 500          # steps between checkpoints (one is also written at exit)
    device: str = "auto"           # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    max_minutes: float = 0.0       # stop cleanly (checkpoint written) after this many minutes; 0 = no limit
    holdout: tuple[str, ...] = ()  # video ids / identities (shell patterns) kept out of training for evaluation
    max_nonfinite: int = 5         # consecutive steps with a NaN/inf loss before stopping (NonFiniteLossError)
    fixed_episodes: bool = False   # reuse epoch 0's episodes every epoch (tests, overfitting demos); off = paper
    flip: bool = False             # mirror whole episodes at random (augmentation; not in the paper)
    init: str = ""                 # warm start: E, G, D (not W) from a shipped name, checkpoint or run folder
                                   # (ignored when resuming); "" = the paper's random initialisation
    init_w: str = "embedder"       # warm start only: W_i <- mean of the copied E(x, y) over row i's frames
                                   # ("embedder": L_MCH starts near 0, as FT's w' = w0 + ê) or "random"
    w_rows: str = "video"          # a row of D's W per training "video" (paper) or per "identity" (person: clips
                                   # of one person, named by `tkh preprocess --identities`, share a row)
    tensorboard: bool = True       # also log to RUN/tb when the tensorboard package is installed
    progress: bool = True          # tqdm progress bar with it/s and ETA (rank 0 only)

    def __post_init__(self) -> None:
        self.channels_last = _precision_fields("train", self.amp, self.channels_last)
        if self.steps < 0 or self.batch_size < 1 or self.k_shots < 1 or self.d_steps_per_g < 0:
            raise ConfigError("train.steps must be >= 0, train.batch_size and train.k_shots >= 1, "
                              "train.d_steps_per_g >= 0")
        if self.w_rows not in ("video", "identity"):
            raise ConfigError(f"train.w_rows must be 'video' or 'identity', got {self.w_rows!r}")
        if self.init_w not in ("embedder", "random"):
            raise ConfigError(f"train.init_w must be 'embedder' or 'random', got {self.init_w!r}")
        if isinstance(self.holdout, str):  # `holdout: lp_d5` in YAML means one id
            self.holdout = (self.holdout,)


@dataclass
class AdaptConfig:
    """Few-shot adaptation of a new face (sec. 3.3): feed-forward (FF) or fine-tuning (FT)."""

    mode: str = "ft"               # "ff" feed-forward (ê_NEW only, no training) or "ft" fine-tuning
    steps: int = 40                # FT generator updates (paper: ~40 epochs over the T images, one re-impl.)
    batch_size: int = 1            # images per FT step (drawn from the T adaptation images)
    lr_g: float = 5e-5             # Adam learning rate of G and ψ' (paper: the meta-learning rate of G)
    lr_d: float = 2e-4             # Adam learning rate of D and w' (paper: the meta-learning rate of D)
    betas: tuple[float, float] = (0.0, 0.999)  # Adam betas, as in meta-learning
    d_steps_per_g: int = 1         # D updates per G update during FT (meta-learning uses 2; 1 halves CPU time)
    perceptual: str = "offline"    # L_CNT networks during FT: "offline" (those loadable without a download,
                                   # tkh.nets.available_perceptual()), or any loss.perceptual value
    amp: str = "auto"              # "auto" (CUDA: bf16; CPU: bf16 where a probe finds it faster), "bf16", "off"
    channels_last: str = "auto"    # "auto", "on", "off", as train.channels_last
    max_nonfinite: int = 5         # consecutive FT steps with a NaN/inf loss (each skipped) before NonFiniteLossError
    seed: int = 0                  # seeds the FT batch order (same images + seed -> same result)
    max_seconds: float = 0.0       # stop FT early after this many seconds (0 = no limit; `tkh demo` on a CPU)

    def __post_init__(self) -> None:
        if self.mode not in ("ff", "ft"):
            raise ConfigError(f"adapt.mode must be 'ff' or 'ft', got {self.mode!r}")
        if self.steps < 0 or self.batch_size < 1 or self.d_steps_per_g < 0:
            raise ConfigError("adapt.steps must be >= 0, adapt.batch_size >= 1 and adapt.d_steps_per_g >= 0")
        self.channels_last = _precision_fields("adapt", self.amp, self.channels_last)


@dataclass
class Config:
    """One experiment: the model, its losses, and how it is trained and adapted."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    # --- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists, as in YAML/JSON

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for f in fields(cls):
            sub_cls = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "adapt": AdaptConfig}[f.name]
            kwargs[f.name] = _build(sub_cls, data.get(f.name) or {}, f"{source}: {f.name}")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; see configs/ for the shipped ones")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **sections: Any) -> Config:
        """Copy with some fields changed: `cfg.replace(train={"steps": 10})`."""
        data = self.to_dict()
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return Config.from_dict(data)


def _build(sub_cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(sub_cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    converted = {}
    for key, value in values.items():
        default = getattr(sub_cls(), key) if _has_default(known[key]) else None
        converted[key] = _coerce(value, default, f"{where}.{key}")
    return sub_cls(**converted)


def _precision_fields(section: str, amp: str, channels_last: str | bool) -> str:
    """Check `amp` / `channels_last` (tkh.precision's choices); returns channels_last with the old boolean
    mapped (True -> "on", False -> "off")."""
    if isinstance(channels_last, bool):
        channels_last = "on" if channels_last else "off"
    if amp not in ("auto", "bf16", "off"):
        raise ConfigError(f"{section}.amp must be 'auto', 'bf16' or 'off', got {amp!r}")
    if channels_last not in ("auto", "on", "off"):
        raise ConfigError(f"{section}.channels_last must be 'auto', 'on' or 'off', got {channels_last!r}")
    return channels_last


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Match the default's type where YAML guesses differently: YAML 1.1 reads `1e-4` (no dot) as a string,
    and `off` / `on` / `yes` / `no` as booleans (a string field gets the word back: "off" or "on")."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, str) and isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(default, bool) or value is None or isinstance(value, bool):
        return value
    for kind in (float, int):
        if isinstance(default, kind) and isinstance(value, (str, int, float)) and not isinstance(value, kind):
            try:
                number = kind(value) if isinstance(value, str) or kind is float else value
            except ValueError:
                raise ConfigError(f"{where}: expected a number like {default!r}, got {value!r}") from None
            if kind is int and isinstance(number, float):
                raise ConfigError(f"{where}: expected a whole number like {default!r}, got {value!r}")
            return number
    return value


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def load_config(name_or_path: str | Path) -> Config:
    """A config by file path, or by the name of a shipped one (`tiny`, `small`, `paper-256`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return Config.from_yaml(path)
    shipped = Path(__file__).resolve().parent / "configs" / f"{name_or_path}.yaml"
    return Config.from_yaml(shipped)
