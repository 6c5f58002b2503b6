"""The LightningModule ("system"): receives a U-Net and owns the loss, the metrics, the
optimizer and what is logged. The U-Net itself stays a plain nn.Module.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

from lk_segment import names
from lk_segment.data.normalize import Normalize
from lk_segment.training.guard import NonFiniteGuard
from lk_segment.unet import UNet


def build_model(model_cfg: dict) -> UNet:
    """The U-Net from the ``model`` section of a config (a plain dict)."""
    return UNet(**model_cfg)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged over the batch."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR factor: linear warm-up from ~0 to 1, then cosine decay to 0 at ``total_steps``."""
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class SegmentationSystem(L.LightningModule):
    """BCE + soft Dice; Dice and IoU at threshold 0.5 over the whole validation set.

    ``hparams`` hold the model and optimizer sections as plain dicts, so a checkpoint alone
    rebuilds the architecture (and loads with ``weights_only=True``).
    """

    def __init__(self, model: dict, optim: dict, data: dict | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)  # train() logs the whole resolved config itself
        self.model = build_model(model)
        # Dice over all validation pixels = F1 of the pixel classifier (2TP / (2TP + FP + FN)).
        # validate_args=False: the input checks (unique, all) would make the host wait for the device every step
        self.val_dice = BinaryF1Score(threshold=0.5, validate_args=False)
        self.val_iou = BinaryJaccardIndex(threshold=0.5, validate_args=False)
        self.best_dice = 0.0
        self.channels_last = False
        data = data or {}
        self.normalize = Normalize()  # the loader's uint8 batches become the model's input on the device
        # data.augment_on=gpu: whole batches augmented on the device (kornia). Not an nn.Module: a plain
        # attribute, so it is no child of this module (no checkpoint state; .to(cuda) leaves its CPU generator)
        self.batch_augment = None
        if data.get("augment") and data.get("augment_on", "cpu") == "gpu":
            from lk_segment.data.augment_device import DeviceAugmentation

            self.batch_augment = DeviceAugmentation()
        self.nonfinite = NonFiniteGuard()

    def configure_speed(self, channels_last: bool = False, compile: bool = False) -> None:
        """NHWC weights and inputs and/or ``torch.compile`` of the U-Net, in place, so the
        state_dict keys (and so checkpoints) stay those of the plain model."""
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # (B, C, H, W) stored as NHWC: what oneDNN and cuDNN prefer for convs
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        self.reseed_augmentation(self.current_epoch, self.global_rank)

    def reseed_augmentation(self, epoch: int, rank: int) -> None:
        """data.augment_on=gpu: the epoch's draws from (the run's seed, epoch, global rank) alone, as the CPU
        path's: ranks draw differently, and a run resumed at epoch k draws what an uninterrupted one drew."""
        if self.batch_augment is not None:
            from lk_segment.data.module import augmentation_seed

            self.batch_augment.reseed(augmentation_seed(torch.initial_seed(), epoch, rank, 0))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """The loader's batch, now on the device: uint8 (B, 3, H, W) images and (B, 1, H, W) 0/1 masks
        -> normalised float images and float masks (augmented first with data.augment_on=gpu). A float
        batch (already normalised, as the bench's fixed batch) is used as it is."""
        images, masks = batch
        if images.dtype != torch.uint8:
            return batch
        if self.batch_augment is not None and self.trainer.training:
            images, masks = self.batch_augment(images, masks)
        return self.normalize(images), masks.float()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self._loss(self(images), masks)
        self.nonfinite.record_loss(loss, batch_idx)
        self.log(names.TRAIN_LOSS, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images),
                 sync_dist=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # after backward (and DDP's gradient all-reduce): the device-side flag skips a non-finite update
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed: it skips bad gradients itself
        self.nonfinite.skip_step_if_not_finite(optimizer, grads, self.global_step, self.current_epoch,
                                               check_grads=scaler is None)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The guard's flag is read every log_every_n_steps optimizer steps and after an epoch's last batch.
        # (Here, not in on_train_epoch_end: there rank 0's progress bar has already started the epoch
        # metrics' all-reduces, and a collective of ours would pair with the wrong one on other ranks.)
        last = batch_idx + 1 == self.trainer.num_training_batches
        if last or self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.nonfinite.stop_if_seen(self.trainer.strategy)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, masks = batch
        logits = self(images)
        self.log(names.VAL_LOSS, self._loss(logits, masks), on_epoch=True, batch_size=len(images), sync_dist=True)
        prob = torch.sigmoid(logits.float())
        self.val_dice.update(prob, masks.int())
        self.val_iou.update(prob, masks.int())

    def on_validation_epoch_end(self) -> None:
        dice = self.val_dice.compute()  # synchronised across ranks by torchmetrics
        iou = self.val_iou.compute()
        self.val_dice.reset(), self.val_iou.reset()
        if not self.trainer.sanity_checking:
            self.best_dice = max(self.best_dice, float(dice))
        self.log(names.VAL_DICE, dice, prog_bar=True)
        self.log(names.VAL_IOU, iou)
        self.log(names.VAL_DICE_BEST, self.best_dice)

    def configure_optimizers(self):
        cfg = self.hparams.optim
        # fused: one kernel per step, and it takes the guard's device-side "skip this step" flag (found_inf)
        opt = torch.optim.AdamW(self.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, cfg["warmup_fraction"]))
        # the name is the metric LearningRateMonitor logs it under, every step
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": names.LEARNING_RATE}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["best_dice"] = self.best_dice

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_dice = float(checkpoint.get("best_dice", 0.0))
