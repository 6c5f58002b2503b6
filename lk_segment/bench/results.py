"""The bench's results, typed: what the tables, the JSON file, MLflow and the tests read.

Derived figures (ratios, images/s) are fields computed once in ``__post_init__``, so that
``dataclasses.asdict`` puts them in the JSON beside the measurements they come from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lk_segment.bench.config import BenchConfig


@dataclass
class Roofline:
    """A training step against the machine's measured limits: it cannot take less than its FLOPs
    at the matmul peak, nor less than its bytes at the copy bandwidth (``roofline.step_cost``)."""

    gflop: float
    mbytes: float  # bytes the step moves at least (estimate), in MB
    peak_tflops: float  # matmul peak in the step's dtype, measured in this run
    copy_gbps: float  # device-to-device copy bandwidth, measured in this run
    measured_ms: float
    roofline_ms: float = field(init=False)
    bound: str = field(init=False)  # compute | memory: which limit sets roofline_ms
    measured_over_roofline: float = field(init=False)
    mfu: float = field(init=False)  # achieved FLOP/s over the matmul peak

    def __post_init__(self) -> None:
        compute_ms = self.gflop / self.peak_tflops  # GFLOP / (TFLOP/s) = ms
        memory_ms = self.mbytes / self.copy_gbps  # MB / (GB/s) = ms
        self.roofline_ms = max(compute_ms, memory_ms)
        self.bound = "compute" if compute_ms >= memory_ms else "memory"
        self.measured_over_roofline = self.measured_ms / self.roofline_ms
        self.mfu = compute_ms / self.measured_ms


@dataclass
class Step:
    """One training-step figure: median of the timed steps, peak memory over them."""

    setting: str  # 32, bf16+cl, ... (parse_setting)
    batch: int
    step_ms: float
    peak_mem_mb: float
    kind: str = "project"  # project (Lightning) | reference (lk_segment.reference) | unet_plain_loop
    first_step_ms: float | None = None  # the first, untimed step: plans, autotuning, compile
    roofline: Roofline | None = None
    images_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.images_per_s = 1000 * self.batch / self.step_ms


@dataclass
class VariantSteps:
    reference: Step
    project_32: Step
    project_fast: Step
    ratio_32: float = field(init=False)  # project / reference, images/s
    ratio_fast: float = field(init=False)

    def __post_init__(self) -> None:
        self.ratio_32 = self.project_32.images_per_s / self.reference.images_per_s
        self.ratio_fast = self.project_fast.images_per_s / self.reference.images_per_s


@dataclass
class Breakdown:
    """Where a step goes (``torch.profiler``): convolutions, forward and backward, and the rest."""

    setting: str
    step_ms: float
    conv_ms: float
    step_gflop: float
    conv_tflops: float | None  # None: part of the convolution work ran by FFT, outside aten::convolution
    other_ms: float = field(init=False)
    conv_share: float = field(init=False)

    def __post_init__(self) -> None:
        self.other_ms = self.step_ms - self.conv_ms
        self.conv_share = self.conv_ms / self.step_ms


@dataclass
class PairRatios:
    """``fast`` against ``slow`` (e.g. 1x5 against 5x5): step-time ratios, timed and profiled."""

    fast: str
    slow: str
    turns_ms: dict[str, float]  # plain-loop steps timed in turns: the ratio's own figure
    timed_project_32: float  # the step ratio in the variants table, float32 and fast
    timed_project_fast: float
    step: float  # the profiled step, conv and other times, FLOPs: ratios from the breakdown
    flops: float
    conv_ms: float
    other_ms: float
    step_at_equal_conv_efficiency: float  # had ``fast``'s convolutions run at ``slow``'s FLOP rate
    turns: float = field(init=False)

    def __post_init__(self) -> None:
        self.turns = self.turns_ms[self.fast] / self.turns_ms[self.slow]


@dataclass
class Loader:
    size: list[int]
    train_images: int
    decode_s: float
    first_epoch_images_per_s: float  # decoding the files into a fresh cache
    cached_images_per_s: dict[str, float]  # cpu_aug_w0, cpu_aug_w2, device_aug_w0: from the cache
    model_images_per_s: float  # the model's consumption at the same size and batch
    model_setting: str


@dataclass
class Fused:
    unfused_ms: float
    fused_ms: float
    max_rel_diff: float
    speedup: float = field(init=False)

    def __post_init__(self) -> None:
        self.speedup = self.unfused_ms / self.fused_ms


@dataclass
class Inference:
    predict_ms: float  # one 1918x1280 image through make predict's Predictor
    fused: Fused | None = None  # re-parameterisable variants only


@dataclass
class DwRow:
    """Native depthwise K x K against the FFT path, forward + backward."""

    k: int
    dtype: str  # float32 | bf16 (autocast)
    shape: list[int]  # B, C, H, W
    fft_grid: list[int]  # the padded FFT grid (fast sizes)
    native_ms: float
    fft_ms: float
    native_over_fft: float = field(init=False)

    def __post_init__(self) -> None:
        self.native_over_fft = self.native_ms / self.fft_ms


@dataclass
class Peaks:
    """The machine's limits, measured in this run: the roofline's and the MFU's denominators."""

    matmul_size: int
    bf16_tflops: float
    float32_tflops: float  # with the run's TF32 setting
    copy_mb: int
    copy_gbps: float  # bytes read + written per second by a device-to-device copy

    def tflops(self, setting: str) -> float:
        return self.bf16_tflops if setting.startswith(("bf16", "16")) else self.float32_tflops


@dataclass
class Env:
    device: str
    device_name: str
    torch: str
    threads: int
    cpus: int
    python: str
    tf32: bool  # TF32 in float32 matrix products and convolutions during the run


@dataclass
class BenchResults:
    config: BenchConfig
    env: Env
    size: list[int]  # the steps' H, W
    config_setting: str  # the configured defaults (configs/base.yaml): every variant's "fast" column
    best_setting: str  # the sweep's pick
    settings_reference: Step  # the plain-PyTorch reference of config.settings_variant
    settings: dict[str, Step]  # the settings sweep on config.settings_variant
    errors: dict[str, str]  # settings that failed (e.g. torch.compile without a C++ compiler)
    steps: dict[str, VariantSteps]
    peaks: Peaks
    breakdown: dict[str, Breakdown]
    pairs: dict[str, PairRatios]
    loader: Loader
    inference: dict[str, Inference]
    dwconv: list[DwRow]
    bench_s: float

    def to_dict(self) -> dict:
        return asdict(self)
