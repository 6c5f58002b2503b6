"""The NaN/inf guard: a non-finite loss or gradient never reaches the weights, and the run stops.

Asking "is this loss finite?" on the host after every step (``bool(torch.isfinite(loss))``)
makes the CPU wait for the GPU at every batch, and under DDP adds a collective per step. Here
the answer stays on the device:

- each step a 0/1 flag is computed on the device (loss not finite, or the gradients' total norm
  not finite) and handed to the fused AdamW as ``found_inf``, the hook ``torch.amp.GradScaler``
  uses: the optimizer kernel itself skips that update (weights, moments and step count stay);
- the first flagged step, its batch and its loss are remembered on the device;
- every ``trainer.log_every_n_steps`` steps and at each epoch's end the flag is read once and
  reduced over the DDP ranks (``reduce_boolean_decision``), so all ranks stop together, and the
  run ends FAILED with a ``UserError`` naming the first bad step.

Under DDP the gradients are already all-reduced when they are checked, so every rank skips the
same steps. With ``16-mixed`` the GradScaler skips non-finite gradients itself (they are expected
while it tunes its scale) and owns ``found_inf``: only the loss is watched then.
"""

from __future__ import annotations

import math

import torch

from lk_segment.errors import UserError


class NonFiniteGuard:
    def __init__(self):
        self.loss_flag: torch.Tensor | None = None  # this step's: 1.0 when the loss is not finite
        self.seen: torch.Tensor | None = None  # 1.0 once any step was flagged
        self.first: torch.Tensor | None = None  # (step, batch, loss) of the first flagged step

    def record_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Called in ``training_step`` with the step's loss (no host sync)."""
        loss = loss.detach().float()
        self.loss_flag = (~torch.isfinite(loss)).float()
        self.batch_idx, self.loss = batch_idx, loss

    def skip_step_if_not_finite(self, optimizer, grads: list[torch.Tensor], step: int, epoch: int,
                                check_grads: bool = True) -> None:
        """Called after backward, before the optimizer step: flag the step on the device and let the
        optimizer skip it. ``check_grads=False`` under a GradScaler, which skips bad gradients itself."""
        flag = self.loss_flag
        if flag is None:  # no training_step this step (a manual-optimisation caller): nothing to check
            return
        if check_grads and grads:
            norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
            flag = torch.maximum(flag, (~torch.isfinite(norm)).float())
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning may pass its wrapper
        if getattr(torch_optimizer, "_step_supports_amp_scaling", False):
            torch_optimizer.found_inf = flag  # read by the fused kernel: update skipped where 1.0
        if self.seen is None:
            self.seen = torch.zeros_like(flag)
            self.first = torch.tensor([-1.0, -1.0, -1.0, 0.0], device=flag.device)
        is_first = (flag > 0) & (self.seen == 0)
        here = torch.stack([torch.full_like(flag, step), torch.full_like(flag, epoch),
                            torch.full_like(flag, self.batch_idx), self.loss])
        self.first = torch.where(is_first, here, self.first)
        self.seen = torch.maximum(self.seen, flag)
        self.loss_flag = None

    def stop_if_seen(self, strategy) -> None:
        """Read the flag (one host sync, one tiny all-reduce under DDP); raise on every rank if any saw one."""
        seen = self.seen is not None and bool(self.seen)
        if not strategy.reduce_boolean_decision(seen, all=False):
            return
        if not seen:
            raise UserError("a training loss or gradient was not finite on another process: "
                            "training stopped; lower optim.lr or use trainer.precision=32")
        step, epoch, batch, loss = self.first.tolist()
        what = "" if not math.isfinite(loss) else " with a non-finite gradient"
        raise UserError(f"training loss is {loss:g}{what} at step {int(step)} (epoch {int(epoch)}, "
                        f"batch {int(batch)}): that update was skipped and training stopped; lower optim.lr or use "
                        "trainer.precision=32")
