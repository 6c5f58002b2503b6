"""Training steps: the project's (Lightning) and the plain-PyTorch reference's, timed the same way.

A step is forward + loss + backward + AdamW on one fixed batch already on the device (the data
pipeline is measured on its own, in ``loader``): median of ``steps`` timed steps after
``warmup`` untimed ones, peak memory over the timed ones (``timing.PeakMemory``).
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

import torch
from omegaconf import DictConfig

from lk_segment.bench.config import autocast_dtype, setting_name
from lk_segment.bench.results import Step
from lk_segment.bench.roofline import StepCost, step_cost
from lk_segment.config import to_container
from lk_segment.timing import PeakMemory, Stopwatch, time_call


def project_step(cfg: DictConfig, setting: dict, images: torch.Tensor, masks: torch.Tensor, steps: int,
                 warmup: int, device: torch.device) -> Step:
    """The project's own training step: SegmentationSystem under a Lightning Trainer, timed from
    each batch's start hook to its end hook."""
    import lightning as L

    from lk_segment.system import SegmentationSystem

    config = to_container(cfg)
    torch.manual_seed(0)
    system = SegmentationSystem(model=config["model"], optim=config["optim"], data={"augment": False})
    system.configure_speed(channels_last=setting["channels_last"], compile=setting["compile"])
    watch, memory = Stopwatch(device), PeakMemory(device)

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:  # after cuDNN's autotuning and torch.compile's first graphs
                memory.reset()
            watch.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            watch.stop()

    batch = (images.to(device), masks.to(device))
    loader = torch.utils.data.DataLoader([batch] * (warmup + steps), batch_size=None)  # the same batch each step
    trainer = L.Trainer(max_steps=warmup + steps, precision=setting["precision"], accelerator=device.type,
                        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[StepTimer()])
    with memory:
        trainer.fit(system, train_dataloaders=loader)
    times_ms = [1000 * s for s in watch.seconds()]
    return Step(setting=setting_name(**setting), batch=len(images), step_ms=median(times_ms[warmup:]),
                peak_mem_mb=memory.peak_mb, first_step_ms=times_ms[0])


def plain_step(model: torch.nn.Module, setting: dict, images: torch.Tensor, masks: torch.Tensor,
               device: torch.device) -> Callable[[], None]:
    """One training step of ``model`` in a plain loop under ``setting`` (autocast and
    channels_last as it says; BCE + soft Dice; AdamW), as a closure."""
    from lk_segment.reference import reference_loss

    fmt = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    x, y = images.to(device, memory_format=fmt), masks.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = autocast_dtype(setting)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        reference_loss(logits.float(), y).backward()
        optimizer.step()

    return step


def project_model(cfg: DictConfig) -> torch.nn.Module:
    from lk_segment.system import build_model

    torch.manual_seed(0)
    return build_model(to_container(cfg)["model"])


def reference_step(cfg: DictConfig, images: torch.Tensor, masks: torch.Tensor, steps: int, warmup: int,
                   device: torch.device) -> Step:
    """The plain-PyTorch baseline (float32, NCHW, no compile, its own loop): the hand-written
    ``ReferenceUNet`` for the seed blocks, else the project's own nn.Module in that loop."""
    from lk_segment.reference import REFERENCE_BLOCKS, ReferenceUNet

    m = cfg.model
    torch.manual_seed(0)
    if m.block in REFERENCE_BLOCKS and m.skip == "add" and not m.block_args:
        model, kind = ReferenceUNet(m.block, m.width, m.depth, m.kernel_size), "reference"
    else:
        model, kind = project_model(cfg), "unet_plain_loop"
    float32 = {"precision": "32", "channels_last": False, "compile": False}
    step = plain_step(model, float32, images, masks, device)
    with PeakMemory(device) as memory:
        timing = time_call(step, steps, warmup, device, memory)
    return Step(setting="32", batch=len(images), step_ms=timing.median_ms, peak_mem_mb=memory.peak_mb, kind=kind)


def training_cost(cfg: DictConfig, images_shape: tuple[int, ...]) -> StepCost:
    """FLOPs and bytes of one training step of ``cfg``'s model (``roofline.step_cost``)."""
    from lk_segment.reference import reference_loss

    return step_cost(project_model(cfg), images_shape, lambda logits, y: reference_loss(logits.float(), y))
