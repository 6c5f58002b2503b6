"""One place for each default: config.py's dataclasses say what runs; a block keeps its own k."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from torch import nn

from lk_segment.config import Config, load_config, to_container
from lk_segment.system import build_model


def test_the_dataclass_defaults_are_what_runs():
    assert to_container(load_config()) == OmegaConf.to_container(OmegaConf.structured(Config))
    cfg = load_config()
    assert cfg.trainer.precision == "auto" and cfg.trainer.channels_last is True


def depthwise_kernels(model: nn.Module) -> set[tuple[int, int]]:
    return {m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}


@pytest.mark.parametrize("variant,overrides,kernel", [
    (None, ["model.block=dws"], (7, 7)),  # no variant file: the block's own default, the variant's k
    ("dws", [], (7, 7)),  # the variant file's k
    ("dws", ["model.kernel_size=3"], (3, 3)),  # the command line's
])
def test_kernel_size_unset_leaves_the_blocks_default(variant, overrides, kernel):
    cfg = load_config(variant, ["model.width=4", "model.depth=1", *overrides])
    assert depthwise_kernels(build_model(to_container(cfg)["model"])) == {kernel}


@pytest.mark.parametrize("cpu_bf16,cuda,cuda_bf16,accelerator,expected", [
    (True, False, False, "auto", "bf16-mixed"),  # AVX512-BF16 / AMX: bf16 in hardware
    (False, False, False, "auto", "32"),  # AVX2 only: bf16 would be emulated, 5x slower
    (False, True, True, "auto", "bf16-mixed"),  # a GPU with bf16
    (False, True, False, "gpu", "16-mixed"),  # a GPU without it
    (True, True, True, "cpu", "bf16-mixed"),  # the CPU asked for, on a machine with a GPU
    (False, True, True, "cpu", "32"),
])
def test_precision_auto_picks_bf16_only_where_the_hardware_has_it(monkeypatch, cpu_bf16, cuda, cuda_bf16,
                                                                   accelerator, expected):
    import torch

    from lk_segment.device import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    assert resolve_precision("auto", accelerator) == expected
    assert resolve_precision("16-mixed", accelerator) == "16-mixed"  # an explicit choice is kept


def test_precision_auto_takes_16_mixed_on_a_gpu_that_only_emulates_bf16(monkeypatch):
    """A T4 or V100: torch.cuda.is_bf16_supported() says yes by counting emulation; bf16 there is slower than fp16."""
    import torch

    from lk_segment.device import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "gpu") == "16-mixed"
    assert resolve_precision("auto", "auto") == "16-mixed"


@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_notebook"])
def test_a_forking_strategy_on_a_gpu_stops_in_one_line_before_cuda_is_touched(monkeypatch, strategy):
    """The run reads the GPU (its name, bf16) before fit, which initialises CUDA, and a forked process cannot use
    CUDA then: only ddp is supported on a GPU, said before anything asks the GPU (or a missing one) a question."""
    import torch

    from lk_segment.commands.train import build_trainer
    from lk_segment.device import check_strategy
    from lk_segment.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the CUDA calls that follow would fail here
    cfg = load_config("3x3", ["trainer.accelerator=gpu", f"trainer.strategy={strategy}", "trainer.devices=2"])
    with pytest.raises(UserError, match="trainer.strategy=ddp$") as error:
        build_trainer(cfg.trainer, logger=False)
    assert "\n" not in str(error.value)
    check_strategy(strategy, "cpu")  # on the CPU, forking is fine
    check_strategy("ddp", "gpu")
