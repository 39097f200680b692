"""Training configuration: one frozen dataclass, every knob visible in one block, and named presets.

Resolution order (later wins): the dataclass defaults, a named preset (``--preset``), a TOML or
YAML file (``--config``), then command-line flags. The resolved config is written to the run
folder as ``config.json`` together with the network's ``ModelConfig``.

The dataclass defaults plus the ``digits`` preset's network size are the 2-core CPU configuration
that trains a Patch Forcing network on the bundled digits in a few minutes. A preset's network
size overrides (depth, hidden_size, num_heads, patch_size) belong to its network: choosing another
``--model`` drops them unless they are set again next to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchforcing.errors import ConfigError
from patchforcing.json_files import read_bytes_capped
from patchforcing.models import PRESETS as MODEL_PRESETS
from patchforcing.models import T2I_PRESETS, Kind, ModelConfig, T2IConfig, preset_config, t2i_preset_config
from patchforcing.timesteps import DISTRIBUTIONS, PER_SAMPLE
from patchforcing.training.repa import target_source
from patchforcing.training.trackers import parse_trackers

DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**63  # torch generators take seeds below 2^64; image i of a run uses seed + i
MAX_TEXT_LENGTH = 4096  # padded caption tokens: far above any encoder's (the paper pads to 256)
PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on CUDA, float32 on the CPU


def knob(default: Any, help: str) -> Any:  # noqa: A002 - the argparse word
    """A config field with its one-line reason (shown by ``patchforcing train --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. ``patchforcing train --field-name value`` sets any field."""

    # --- run --------------------------------------------------------------------------------------
    out: str = knob("runs/digits", "run folder: config.json, metrics.jsonl, checkpoints/, samples/; rerun to resume")
    preset: str = knob("digits", "the named preset the other values started from")
    # --- data -------------------------------------------------------------------------------------
    data: str = knob("digits", "built-in name (digits, photos, photos-labeled), a folder of images, or a latent folder")
    resolution: int | None = knob(None, "image side; none: the data set's own (16 digits, 32 photos/folders)")
    latent_sampling: str = knob("auto", "latent folders: posterior (mean + std * noise, as REPA) or mean; auto: posterior where the folder stores the std")
    # --- network: a preset of patchforcing.models; channels, size and classes follow the data -----
    model: str = knob("PF-XS/2", "network preset (PF-* Patch Forcing, SiT-* global-time baseline, T2I-* text-to-image)")
    depth: int | None = knob(None, "override the network preset's number of blocks (none: keep the preset's)")
    hidden_size: int | None = knob(None, "override the network preset's width (none: keep the preset's)")
    num_heads: int | None = knob(None, "override the network preset's attention heads (none: keep the preset's)")
    patch_size: int | None = knob(None, "override the preset's patch size (none: keep the preset's)")
    class_dropout_prob: float = knob(0.1, "label dropout for classifier-free guidance (docs/method.md §3.2; 0.1 in the paper)")
    # --- text-to-image (docs/method.md §8): T2I-* networks on captioned data ------------------------------
    text_encoder: str | None = knob(
        None, "T2I-* only: byte-toy (bundled toy), qwen3-vl-embedding-2b, t5-xxl, t5-xxl-authors, clip-l, clip-l-authors, "
        "a HF repo id or folder; none: the preset's")
    text_length: int | None = knob(None, "T2I-* only: padded token count of the captions (none: the encoder's, 256 for the paper's)")
    text_dropout: float = knob(0.1, "T2I-* only: probability a caption is replaced by the empty prompt (docs/method.md §9.2: 0.1)")
    # --- objective (docs/method.md §4) -------------------------------------------------------------------------
    timesteps: str = knob("auto", "training timestep distribution; auto: ltg for PF-*, uniform for SiT-*")
    timestep_options: str = knob("", "distribution parameters as key=value pairs, e.g. 'loc=0.5,std=0.6'")
    ltg_loc: float | None = knob(None, "ltg only: where the cleanest patch lies, t_max = sigmoid(loc + n) (docs/where_it_pays.md); "
                                 "none: the paper's 0.7 (0.5 for text-to-image); a loc in --timestep-options wins")
    uncertainty_weight: float = knob(0.01, "lambda of loss = flow + lambda * nll (0.01 in the paper)")
    # --- REPA (docs/method.md §7): align hidden tokens with a frozen encoder's features of the clean image ----
    repa_encoder: str | None = knob(None, "REPA target encoder: digits-cnn (ships with the package), dinov2-b, dinov2:FOLDER; none: off")
    repa_weight: float = knob(0.5, "weight of the REPA loss in loss = flow + lambda * nll + w * repa (0.5 in the REPA paper)")
    repa_depth: int | None = knob(None, "REPA aligns the tokens after this block (none: the preset size's, 8 for XL, 4 for B)")
    repa_projector_dim: int = knob(2048, "hidden width P of the REPA projector (2048 in the REPA paper; smaller for CPU runs)")
    # --- optimisation -----------------------------------------------------------------------------
    steps: int = knob(3000, "total optimizer steps; raise it and rerun the same command to train on")
    batch_size: int = knob(64, "GLOBAL batch (split evenly across processes)")
    # The paper's 1e-4 is for 130M-675M parameter networks trained 400k steps. The digits network
    # (0.18M weights, 3k steps) learns far faster with 1e-3: EMA validation loss at step 2000 is
    # 0.204 with 1e-3 against 0.263 with 3e-4; warm-up and clipping keep it stable.
    lr: float = knob(1e-3, "AdamW learning rate after warm-up (the paper: 1e-4)")
    warmup_steps: int = knob(200, "linear warm-up from lr/warmup_steps to lr, then constant (the paper: 1000)")
    weight_decay: float = knob(0.0, "AdamW weight decay (the paper: 0)")
    beta1: float = knob(0.9, "AdamW beta1 (PyTorch default, as the paper)")
    beta2: float = knob(0.999, "AdamW beta2 (PyTorch default, as the paper)")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0: no clipping)")
    # The EMA averages over about 1 / (1 - decay) steps. 0.9999 (10k steps) suits 400k steps; in a
    # 3k-step run even 0.999 still holds 0.999^1000 = 37% of the untrained initial weights at step
    # 1000 and 5% at step 3000 (its samples stay noise until ~2000 steps; validation loss 0.208 at
    # step 4000). 0.995 averages the last ~200 steps: 0.204 already at step 2000.
    ema_decay: float = knob(0.995, "EMA decay of the sampling network (the paper: 0.9999 for 400k steps)")
    seed: int = knob(0, "seeds the initial weights and every step's data order, noise and times")
    # --- hardware ---------------------------------------------------------------------------------
    device: str = knob("auto", "cpu, cuda, or auto (cuda when available); torchrun gives each rank its GPU")
    precision: str = knob("auto", "auto (bf16 autocast on CUDA, float32 on CPU), bf16 or fp32")
    compile: bool = knob(False, "torch.compile the network (slow first steps, faster later on GPUs)")
    num_workers: int = knob(0, "DataLoader worker processes that draw batches (0: in the training process)")
    dist_timeout: float = knob(600.0, "seconds a process waits for the slowest one under torchrun before the job fails")
    grad_accum: int = knob(1, "micro-batches per step and process, one backward each: the same update in less memory")
    # --- monitoring -------------------------------------------------------------------------------
    log_every: int = knob(25, "write a metrics.jsonl line every this many steps")
    ckpt_every: int = knob(1000, "checkpoint every this many steps (and always at the end; 0: only at the end)")
    keep_checkpoints: int = knob(3, "keep only the newest N checkpoints")
    val_every: int = knob(500, "validation loss (EMA network, 8 segments) every this many steps (0: never)")
    val_size: int = knob(256, "held-out images in the fixed validation batch")
    sample_every: int = knob(500, "write samples/step-XXXXXXXX.png every this many steps and at the end (0: never)")
    sample_count: int = knob(100, "images in a sample grid")
    sample_steps: int = knob(16, "Euler steps of the sample grids")
    sample_cfg_scale: float = knob(1.0, "classifier-free guidance of the sample grids (1: none)")
    log: str = knob("none", "experiment tracker beside metrics.jsonl: tensorboard (extra [tensorboard]), wandb (extra [wandb]; "
                    "WANDB_PROJECT, WANDB_MODE from the environment), tensorboard,wandb, or none")

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_ranges()

    # --- checks -----------------------------------------------------------------------------------
    def _check_choices(self) -> None:
        if self.model not in MODEL_PRESETS and self.model not in T2I_PRESETS:
            raise ConfigError(f"unknown model preset {self.model!r}; choose one of: {', '.join([*MODEL_PRESETS, *T2I_PRESETS])}")
        if self.timesteps != "auto" and self.timesteps not in DISTRIBUTIONS:
            raise ConfigError(f"unknown timestep distribution {self.timesteps!r}; choose auto or one of: {', '.join(DISTRIBUTIONS)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.is_text and self.repa_encoder is not None:
            raise ConfigError(f"REPA (--repa-encoder) is for class-conditional PF-* networks; {self.model} is a "
                              "text-to-image network: drop --repa-encoder, or choose a PF-* --model")
        if self.model_kind is Kind.SIT and self.timesteps not in ("auto", *PER_SAMPLE):
            raise ConfigError(
                f"{self.model} is a global-time network; timesteps {self.timesteps!r} draws one time per patch. "
                f"Use --timesteps {' or '.join(PER_SAMPLE)}, or a PF-* model"
            )
        self.timestep_params()  # raises on a malformed --timestep-options
        parse_trackers(self.log)  # raises on an unknown tracker

    def _check_ranges(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "keep_checkpoints", "val_size", "sample_count", "sample_steps", "log_every",
                    "repa_projector_dim")
        non_negative = ("warmup_steps", "ckpt_every", "val_every", "sample_every", "num_workers", "grad_clip", "weight_decay",
                        "uncertainty_weight", "repa_weight")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in non_negative:
            if not getattr(self, name) >= 0:  # `not >=`: NaN fails too
                raise ConfigError(f"{name} must be zero or positive, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)} (AdamW's default: 0.9 and 0.999)")
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, 2^63), got {self.seed}")
        if self.text_length is not None and not 1 <= self.text_length <= MAX_TEXT_LENGTH:
            raise ConfigError(f"text_length must lie in [1, {MAX_TEXT_LENGTH}] tokens, got {self.text_length} "
                              "(the paper pads captions to 256)")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be a positive number of seconds, got {self.dist_timeout}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0 <= self.class_dropout_prob < 1:
            raise ConfigError(f"class_dropout_prob must lie in [0, 1), got {self.class_dropout_prob}")
        if self.repa_depth is not None and (self.repa_depth < 1 or self.repa_encoder is None):
            raise ConfigError(f"repa_depth {self.repa_depth} needs --repa-encoder and a block number >= 1")
        if self.latent_sampling not in ("auto", "posterior", "mean"):
            raise ConfigError(f"latent_sampling must be auto, posterior or mean, got {self.latent_sampling!r}")
        if not 0 <= self.text_dropout < 1:
            raise ConfigError(f"text_dropout must lie in [0, 1), got {self.text_dropout}")

    # --- derived ----------------------------------------------------------------------------------
    @property
    def model_kind(self) -> Kind:
        return Kind.PATCH_FORCING if self.is_text else Kind(MODEL_PRESETS[self.model]["kind"])

    @property
    def is_text(self) -> bool:
        """A text-to-image network (T2I-* preset)."""
        return self.model in T2I_PRESETS

    @property
    def timestep_name(self) -> str:
        """The distribution actually used (``auto`` resolved by the network kind)."""
        if self.timesteps != "auto":
            return self.timesteps
        return "ltg" if self.model_kind is Kind.PATCH_FORCING else "uniform"

    def timestep_params(self) -> dict[str, float]:
        """``timestep_options`` parsed: ``'loc=0.5, std=0.6'`` -> ``{'loc': 0.5, 'std': 0.6}``."""
        params = {}
        for item in filter(None, (s.strip() for s in self.timestep_options.split(","))):
            key, eq, value = item.partition("=")
            try:
                params[key.strip()] = float(value)
            except ValueError:
                eq = ""
            if not eq:
                raise ConfigError(f"--timestep-options {self.timestep_options!r}: write key=value pairs separated by commas, e.g. 'loc=0.5,std=0.6'")
        if self.timestep_name == "ltg" and self.ltg_loc is not None:
            params.setdefault("loc", self.ltg_loc)
        if self.is_text and self.timestep_name == "ltg":
            params.setdefault("loc", 0.5)  # docs/method.md §2.7, §9.2: text-to-image uses ltg with loc 0.5
        return params

    def model_overrides(self) -> dict[str, Any]:
        """The ModelConfig fields this config sets on top of the network preset (data-derived ones aside)."""
        names = ("depth", "hidden_size", "num_heads", "patch_size")
        out = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        out["class_dropout_prob"] = self.class_dropout_prob
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)

# PF-XS/2 as is (4 blocks, width 128, 1.27M weights) trains at 70 images/s on the 2-core CPU (one
# thread, shared machine): 3k steps of 64 would take 45 minutes. Half the depth and width (0.18M
# weights) keeps the 8x8 patch grid and the difficulty head and runs 6x faster (450 images/s).
_DIGITS_NET = dict(depth=2, hidden_size=64, num_heads=2)
_SIZE_FIELDS = ("depth", "hidden_size", "num_heads", "patch_size")

# The ImageNet-256 settings of docs/method.md §4.3 (SD-VAE latents 4x32x32 written by `patchforcing prepare-latents`).
# docs/method.md §4.3 gives the batch per GPU (64 for B, 32 for XL); 256 is the global batch of SiT/DiT, i.e. 4 GPUs x 64
# (B) or 8 GPUs x 32 (XL). With another GPU count set --batch-size to (GPUs x per-GPU batch).
_IMAGENET = dict(
    data="latents/imagenet-256", steps=400_000, batch_size=256,
    lr=1e-4, warmup_steps=1000, ema_decay=0.9999, num_workers=4, log_every=100, ckpt_every=10_000,
    keep_checkpoints=5, val_every=10_000, val_size=1024, sample_every=50_000, sample_count=64, sample_steps=64,
)

PRESETS: dict[str, dict[str, Any]] = {
    # PF-XS/2 narrowed for 2 CPU cores (see _DIGITS_NET); ltg centres the cleanest patch at t = 0.5 on small pixel
    # images (docs/where_it_pays.md: the paper's 0.7 loses to global time there, 0 wins on photos and digits)
    "digits": dict(_DIGITS_NET, ltg_loc=0.0),
    "digits-sit": dict(_DIGITS_NET, out="runs/digits-sit", model="SiT-XS/2"),  # its global-time baseline (uniform t)
    # Text-to-image on digits-captions with the bundled toy encoder (T2I-XS/2 narrowed like the digits net).
    "digits-t2i": dict(out="runs/digits-t2i", data="digits-captions", model="T2I-XS/2", depth=2, hidden_size=64, num_heads=2),
    "imagenet-b2": dict(_IMAGENET, out="runs/imagenet-b2", model="PF-B/2"),
    "imagenet-xl2": dict(_IMAGENET, out="runs/imagenet-xl2", model="PF-XL/2"),
    "imagenet-sit-b2": dict(_IMAGENET, out="runs/imagenet-sit-b2", model="SiT-B/2"),
    "imagenet-sit-xl2": dict(_IMAGENET, out="runs/imagenet-sit-xl2", model="SiT-XL/2"),
}


# --- building a config ------------------------------------------------------------------------------
def resolve_config(preset: str | None = None, config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < preset < config file < ``overrides``; every value is type-checked.

    Example:
        >>> cfg = resolve_config("digits", steps=200, out="/tmp/run")
    """
    from_file = load_config_file(config_file) if config_file else {}
    name = overrides.pop("preset", None) or from_file.pop("preset", None) or preset or "digits"
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; choose one of: {', '.join(PRESETS)}")
    base = dict(PRESETS[name])
    chosen = {**from_file, **overrides}
    preset_model = base.get("model", FIELDS["model"].default)
    if chosen.get("model", preset_model) != preset_model:
        for key in _SIZE_FIELDS:  # the preset's size overrides were meant for the preset's network
            base.pop(key, None)
    values = {**base, **chosen, "preset": name}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; valid options: {', '.join(FIELDS)}")
    return TrainConfig(**{k: coerce(k, v) for k, v in values.items()})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML (``.toml``) or YAML (``.yaml``/``.yml``) mapping; ``-`` in keys reads as ``_``."""
    path = Path(path)
    try:  # a regular file of at most 1 MB (a device or a FIFO in its place is refused unread)
        text = read_bytes_capped(path, fix="pass a .toml or .yaml file of settings").decode("utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r} ({err.strerror}); check the path") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {str(path)!r}: use a .toml, .yaml or .yml file")
    except ConfigError:
        raise
    except ImportError:
        raise ConfigError("YAML config files need pyyaml (pip install pyyaml); TOML on Python 3.10 needs tomli") from None
    except Exception as err:  # noqa: BLE001 - any parse error of the user's file
        raise ConfigError(f"cannot parse config file {str(path)!r}: {err}") from None
    if not isinstance(data, dict) or any(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"config file {str(path)!r} must be a flat mapping of option = value (no sections)")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (from a flag, a TOML/YAML file or Python) to the type of field ``name``."""
    if name not in FIELDS:
        raise ConfigError(f"unknown training option {name!r}; valid options: {', '.join(FIELDS)}")
    tp = FIELD_TYPES[name]
    optional = type(None) in typing.get_args(tp)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name} needs a value of type {base.__name__}, got none")
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.replace("_", ""))
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} needs a value of type {base.__name__}, got {value!r}") from None


def network_config(config: TrainConfig, data: Any, repa_dim: int | None = None) -> ModelConfig:
    """The network of a run: the model preset, the config's overrides, and the data set's channels,
    resolution and number of classes (``data`` is a ``patchforcing.data.ImageDataset``).

    With ``repa_encoder`` the network gets a REPA projector as wide as the encoder's features
    (``repa_dim``; when None it is read from the data's stored features or the loaded encoder).
    """
    repa = {}
    if config.repa_encoder is not None:
        if repa_dim is None:
            repa_dim = target_source(config, data).feature_dim
        repa = {"repa_dim": repa_dim, "repa_projector_dim": config.repa_projector_dim,
                **({"repa_depth": config.repa_depth} if config.repa_depth is not None else {})}
    return preset_config(
        config.model, input_size=data.resolution, in_channels=data.channels, num_classes=data.num_classes,
        **config.model_overrides(), **repa,
    )


def text_network_config(config: TrainConfig, data: Any, text_fields: dict[str, Any]) -> T2IConfig:
    """The T2I network of a run: the preset, the data's channels and resolution, the encoder's width
    and name (``text_fields`` from ``TextConditioner.network_fields``), and the size overrides
    (``hidden_size`` is the width ``hidden_dim``; ``num_heads`` sets ``head_dim = hidden_dim / num_heads``)."""
    fields: dict[str, Any] = {"input_size": data.resolution, "in_channels": data.channels, **text_fields}
    for name in ("depth", "patch_size"):
        if getattr(config, name) is not None:
            fields[name] = getattr(config, name)
    if config.hidden_size is not None:
        fields["hidden_dim"] = config.hidden_size
    if config.num_heads is not None:
        width = fields.get("hidden_dim", T2I_PRESETS[config.model]["hidden_dim"])
        fields["head_dim"] = width // config.num_heads
    return t2i_preset_config(config.model, **fields)


def data_info(data: Any) -> dict[str, Any]:
    """What ``config.json`` and the checkpoints record about the training data; for latents also the
    VAE and the scale/shift of the latent folder, which ``sample`` and ``evaluate`` decode with."""
    info = {"name": data.name, "channels": data.channels, "resolution": data.resolution,
            "num_classes": data.num_classes, "num_images": len(data), "latent": data.is_latent}
    if data.is_latent:
        info.update(vae=data.vae, scale_factor=data.scale_factor, shift_factor=data.shift_factor,
                    image_resolution=data.image_resolution)
    return info


def config_json(config: TrainConfig, model_config: dict | None, data_info: dict | None) -> str:
    """The text of ``config.json``: the training config, the resolved network config and the data."""
    doc = {**config.to_dict(), "timesteps_resolved": config.timestep_name, "model_config": model_config, "data_info": data_info}
    return json.dumps(doc, indent=2) + "\n"
