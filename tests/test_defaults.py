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
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.channels_last is True


def depthwise_kernels(model: nn.Module) -> set[tuple[int, int]]:
    return {m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}


@pytest.mark.parametrize("variant,overrides,kernel", [
    (None, ["model.block=dws"], (5, 5)),  # no variant file: the block's own default
    ("dws", [], (7, 7)),  # the variant file's k
    ("dws", ["model.kernel_size=3"], (3, 3)),  # the command line's
])
def test_kernel_size_unset_leaves_the_blocks_default(variant, overrides, kernel):
    cfg = load_config(variant, ["model.width=4", "model.depth=1", *overrides])
    assert depthwise_kernels(build_model(to_container(cfg)["model"])) == {kernel}
