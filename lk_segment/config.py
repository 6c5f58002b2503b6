"""Typed configuration: dataclasses checked by OmegaConf, so a misspelt key or a wrong type
fails at once with the key's name.

Merge order: these defaults (with ``REAL_PHOTO_DEFAULTS`` over them when ``data.root`` names real
photos) < configs/base.yaml < configs/variant/<VARIANT>.yaml <
configs/profile/<PROFILE>.yaml (``profile=gpu`` on the command line) < ``key=value`` overrides from the
command line. Field names equal the constructor arguments they feed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lk_segment.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CARVANA_ASPECT = 1918 / 1280  # width / height of every Carvana photo


@dataclass
class ModelConfig:
    block: str = "3x3"  # a name from the block registry (lk-segment variants lists them)
    width: int = 16  # channels at the first level; doubled at each level below
    depth: int = 4  # number of 2x2 poolings; input sides are padded to multiples of 2**depth
    # k of the block's k x k (or 1 x k, k x 1) kernels; None: the block's own default (each
    # configs/variant file sets the k it is studied at)
    kernel_size: int | None = None
    skip: str = "add"  # add (the seed study's choice) | concat
    block_args: dict[str, Any] = field(default_factory=dict)  # extra options of the block
    # x2 decoder upsampling: transpose (the seed's 2x2 transposed conv) | bilinear (+ 1x1 conv)
    # | pixelshuffle (1x1 conv + sub-pixel shuffle, ICNR-initialised against checkerboards)
    upsample: str = "transpose"
    boundary_refine: bool = False  # x + conv3x3(relu(conv3x3(x))) after each decoder block (Peng et al.)


@dataclass
class DataConfig:
    root: str | None = None  # Kaggle layout (train/, train_masks/); None: synthetic data under data/
    # training size; width follows the 1918:1280 aspect unless given. 128 x 192: about 1/10 of
    # 1918 x 1280, keeps a CPU epoch under a minute (real photos: 96, REAL_PHOTO_DEFAULTS)
    height: int = 128
    width: int | None = None
    val_fraction: float = 0.2  # of the cars (never of the images: a car's 16 views stay together)
    split_seed: int = 0  # the split does not move with the training seed
    # k-fold cross-validation by car (make study): folds=k >= 2 deals the cars to k folds and fold
    # data.fold validates (val_fraction is then unused); 0: the val_fraction split
    folds: int = 0
    fold: int = 0
    batch_size: int = 8
    # None: 0 when training on the CPU (workers compete with the step for the cores), on CUDA a share
    # of the cores per device (persistent workers); see data.module.default_num_workers
    num_workers: int | None = None
    cache_dir: str = "data/cache"
    augment: bool = True
    # cpu: albumentations per image in the loader; gpu: whole batches on the training device,
    # draws made there (for a GPU whose CPU workers cannot keep up; see docs/performance.md)
    augment_on: str = "cpu"
    synthetic_cars: int = 32  # size of the embedded dataset (x 16 views)
    limit_images: int | None = None  # use only the first N images (quick experiments)
    # an unreadable image, a mask missing or of another size, a non-image file in train/:
    # error stops before training; skip leaves it out, reports it and logs data/skipped_files
    on_bad_file: str = "error"


@dataclass
class OptimConfig:
    lr: float = 3e-3  # AdamW peak learning rate (linear warm-up, then cosine to 0)
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1  # of all steps spent warming up


@dataclass
class TrainerConfig:
    max_epochs: int = 6  # real photos: 16 (REAL_PHOTO_DEFAULTS)
    # auto | 32 | bf16-mixed | 16-mixed. auto: bf16-mixed where the device has bf16 in hardware (a
    # GPU that supports it: 16-mixed on one that does not; a CPU with AVX512-BF16 or AMX), else 32: a CPU
    # without them emulates bf16, several times slower than float32 (figures: docs/performance.md). The run
    # logs the precision it resolved to.
    precision: str = "auto"
    accelerator: str = "auto"
    devices: Any = 1  # int or "auto"; >1 with strategy=ddp
    num_nodes: int = 1  # machines in a multi-node DDP run (torchrun or SLURM start each one's processes)
    strategy: str = "auto"
    deterministic: bool = False
    log_every_n_steps: int = 10
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    enable_progress_bar: bool = True
    # NHWC model and inputs: oneDNN's and cuDNN's preferred layout, the faster step (docs/performance.md)
    channels_last: bool = True
    # torch.compile the U-Net: off, as the compiled step was no faster on CPU and its first step pays the compile
    compile: bool = False
    # epochs between two full-resolution Dice evaluations (val/dice_full); 0: after the last epoch only.
    # The best checkpoint is always scored at the end (val/dice_full_best).
    full_res_eval_every: int = 0


@dataclass
class TrackingConfig:
    # MLflow's system metrics (system/cpu_utilization_percentage, system/gpu_*, ...) sampled this
    # often during training, from the rank that owns the run; 0 turns them off
    system_metrics_interval_s: float = 10.0
    # the best checkpoint's model, fused, as the run's MLflow model ("model": mlflow.pyfunc.load_model,
    # mlflow models serve, the registry); a few seconds at the end of a run
    log_model: bool = True


@dataclass
class Config:
    variant: str = "3x3"  # the configs/variant file that was merged (also the run's name)
    # a configs/profile file merged after the variant's (profile=gpu: a size and batch for a GPU); None: none
    profile: str | None = None
    seed: int = 0
    experiment: str = "lk_segment"  # MLflow experiment
    checkpoint_dir: str = "checkpoints"
    # a run id (or "last": the latest run of this variant) to continue from its last.ckpt,
    # in the same MLflow run, after a crash or a kill
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Training on real photos (data.root= given) unless a layer above says otherwise: the size and epochs
# the study chose (docs/study.md, "Sizing"). On the 24-car sample, 3x3 trained at 96 x 144 for 16
# epochs scored a higher full-resolution Dice (0.9762) than at 128 x 192 for 8 (0.9715) in about the
# same CPU time (2.3 against 2.0 training minutes a fold) and had stopped climbing. The synthetic
# first run keeps the dataclasses' 128 x 192 for 6 epochs: it shows the pipeline, quickly.
REAL_PHOTO_DEFAULTS = {"data": {"height": 96}, "trainer": {"max_epochs": 16}}


def available_variants() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "variant").glob("*.yaml"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "profile").glob("*.yaml"))


def load_config(variant: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Defaults (with REAL_PHOTO_DEFAULTS when the data are real photos), then configs/base.yaml, then the
    variant's file, then the profile's (``profile=<name>`` among the overrides), then the other
    ``key=value`` overrides."""
    try:
        layers = []
        base = CONFIG_DIR / "base.yaml"
        if base.exists():
            layers.append(OmegaConf.load(base))
        if variant is not None:
            path = CONFIG_DIR / "variant" / f"{variant}.yaml"
            if not path.exists():
                raise UserError(f"unknown variant {variant!r}: choose one of {', '.join(available_variants())}")
            layers.append(OmegaConf.merge(OmegaConf.load(path), {"variant": variant}))
        for item in overrides:
            if "=" not in item:
                raise UserError(f"override {item!r} is not key=value (e.g. trainer.max_epochs=3)")
        profile = [item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0] == "profile"]
        if profile and profile[-1] not in ("", "null"):
            path = CONFIG_DIR / "profile" / f"{profile[-1]}.yaml"
            if not path.exists():
                raise UserError(f"unknown profile {profile[-1]!r}: choose one of {', '.join(available_profiles())}")
            layers.append(OmegaConf.load(path))  # the overrides below still win
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(OmegaConf.structured(Config), *layers)
        if cfg.data.root:  # real photos: their defaults go under every layer, which still win
            cfg = OmegaConf.merge(OmegaConf.structured(Config), REAL_PHOTO_DEFAULTS, *layers)
    except OmegaConfBaseException as exc:
        raise UserError(_describe(exc)) from exc
    return cfg


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    first = str(exc).splitlines()[0]
    if "not in struct" in first or "Key '" in first and "not in" in first:
        return f"unknown config key {key!r}: check its spelling (lk-segment config prints every key)"
    if key:
        return f"bad value for config key {key!r}: {first} (lk-segment config prints every key with its default)"
    return f"bad config: {first}"


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def training_size(height: int, width: int | None = None, multiple: int = 32) -> tuple[int, int]:
    """(height, width): width from the Carvana aspect unless given, rounded to a multiple."""
    if width is not None:
        return int(height), int(width)
    return int(height), max(multiple, round(height * CARVANA_ASPECT / multiple) * multiple)
