"""Train one U-Net variant and record it in MLflow.

    lk-segment train --variant 5x5 trainer.max_epochs=3 data.root=/path/to/carvana

``train(cfg)`` is a plain function (tests call it); the command line only builds ``cfg``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from lk_segment import names
from lk_segment.analysis.flops import count_gflops
from lk_segment.config import flatten, training_size
from lk_segment.data.module import AugmentationEpoch, CarvanaDataModule
from lk_segment.device import check_accelerator, check_strategy, device_name, resolve_precision
from lk_segment.errors import UserError
from lk_segment.system import SegmentationSystem
from lk_segment.tracking import (
    artifact_location,
    mark_training_experiment,
    prepare_store,
    public_config,
    tracking_uri,
)
from lk_segment.training.callbacks import PerfMonitor
from lk_segment.training.checkpointing import AtomicCheckpointIO, resume_point
from lk_segment.training.distributed import scale_out_params
from lk_segment.training.full_res import FullResEval
from lk_segment.training.run_logger import RunLogger
from lk_segment.training.run_records import DataLineage, SystemMetrics


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def train(cfg: DictConfig, tags: dict[str, str] | None = None, callbacks: list | tuple = ()) -> dict:
    """Fit ``cfg``; return the run id, the best and last checkpoints and the final metrics.

    ``tags`` are added to the run's (a sweep passes ``mlflow.parentRunId`` to nest it under its
    comparison); ``callbacks`` are extra Lightning callbacks (a sweep's progress line).
    """
    check_accelerator(cfg.trainer.accelerator)  # before the data is prepared or a run created
    check_strategy(cfg.trainer.strategy, cfg.trainer.accelerator)
    # precision=auto becomes what runs here (and is logged so)
    cfg = OmegaConf.merge(cfg, {"trainer": {"precision": resolve_precision(cfg.trainer.precision,
                                                                          cfg.trainer.accelerator)}})
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # what the run shares (params, config.yaml, the checkpoints' hyper-parameters): no credentials
    config = public_config(cfg)
    system = SegmentationSystem(model=config["model"], optim=config["optim"], data=config["data"])
    system.configure_speed(channels_last=cfg.trainer.channels_last, compile=cfg.trainer.compile)
    datamodule = CarvanaDataModule(cfg.data, size_multiple=system.model.size_multiple,
                                   progress=cfg.trainer.enable_progress_bar, seed=cfg.seed)
    _check_training_size(cfg, system.model.size_multiple)
    full_res = FullResEval(cfg.trainer.full_res_eval_every, progress=cfg.trainer.enable_progress_bar)
    # Bad input stops here, before a run is created or touched: the store, the run to resume, the data,
    # what the MLflow model will need.
    model_requirements = None
    if cfg.tracking.log_model:
        from lk_segment.serving import requirements

        model_requirements = requirements()
    prepare_store(cfg.experiment)
    resume_run_id, resume_ckpt = resume_point(cfg) if cfg.resume else (None, None)
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()

    logger = RunLogger(
        run_id=resume_run_id,  # resume: the same run goes on (its tags and params stay as they were)
        experiment_name=cfg.experiment, run_name=cfg.variant, tracking_uri=tracking_uri(),
        artifact_location=artifact_location(),
        tags={"variant": cfg.variant, "block": cfg.model.block,
              "kernel_size": str(cfg.model.kernel_size or "block default"), "seed": str(cfg.seed), **(tags or {})},
    )
    checkpoint = ModelCheckpoint(filename="best-{epoch:03d}", monitor=names.VAL_DICE, mode="max",
                                 auto_insert_metric_name=False)
    # Every epoch's state as last.ckpt, what resume= starts from (Lightning's save_last=True
    # refreshes it only in the epochs that also write a best-*.ckpt).
    last = ModelCheckpoint(filename="last", save_top_k=1)  # no monitor: keeps the latest
    resumed = resume_run_id is not None
    records = [AugmentationEpoch(),  # the augmentation's draws follow the epoch (see data.module)
               LearningRateMonitor(logging_interval="step"),  # train/lr, every step
               SystemMetrics(cfg.tracking.system_metrics_interval_s, resume=resumed), DataLineage(resume=resumed)]
    trainer = build_trainer(cfg.trainer, callbacks=[checkpoint, last, PerfMonitor(), full_res, *records, *callbacks],
                            logger=logger, default_root_dir=cfg.checkpoint_dir,
                            plugins=[AtomicCheckpointIO()])  # a kill during a save never truncates last.ckpt
    # Building the Trainer set this process's global rank (from torchrun's, SLURM's or Lightning's
    # own launcher's environment), so only now is the run created, by global rank 0 alone: on the
    # other ranks the logger writes nothing and the checkpoint folder is rank 0's, sent at fit.
    run_id = logger.run_id
    height, width = training_size(cfg.data.height, cfg.data.width, system.model.size_multiple)
    params = flatten(config)
    params.update({names.MODEL_PARAMS: count_params(system.model), names.TRAIN_HEIGHT: height,
                   names.TRAIN_WIDTH: width,
                   # per image at the training size; the side of the square one output pixel can see
                   names.MODEL_GFLOPS: float(f"{count_gflops(system.model, (height, width)):.4g}"),
                   names.RECEPTIVE_FIELD: system.model.receptive_field_px()})
    params["data/skipped_files"] = len(datamodule.skipped)
    params[names.DEVICE_NAME] = device_name(trainer.strategy.root_device)  # what it really trained on
    params.update(scale_out_params(trainer.world_size, trainer.num_nodes, cfg.data.batch_size))
    try:
        if trainer.is_global_zero:
            mark_training_experiment(logger.experiment, logger.experiment_id)
        if resume_run_id is None:
            logger.log_hyperparams(params)
            _log_config_artifact(logger, config)
        else:
            logger.experiment.update_run(run_id, status="RUNNING")
        _report_skipped(logger, datamodule.skipped)
    except BaseException:
        logger.finalize("failed")
        raise

    if trainer.is_global_zero:
        checkpoint.dirpath = last.dirpath = os.path.realpath(Path(cfg.checkpoint_dir) / run_id)
    _fit(trainer, system, datamodule, resume_ckpt)

    run_id = trainer.strategy.broadcast(run_id)  # every rank returns the same result
    # (a run resumed on another machine may name a best checkpoint that stayed on the first one)
    if trainer.is_global_zero and cfg.tracking.log_model and os.path.isfile(checkpoint.best_model_path):
        from lk_segment.serving import log_model

        log_model(run_id, checkpoint.best_model_path, tracking_uri(), model_requirements)  # runs:/<run id>/model
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(full_res.metrics)  # val/dice_full_best: scored after the last logged step
    return {
        "run_id": run_id,
        "global_rank": trainer.global_rank,  # the command line prints from rank 0 only
        "best_checkpoint": checkpoint.best_model_path,
        "last_checkpoint": last.best_model_path,  # the latest, for a callback without monitor
        "best_dice": system.best_dice,
        "metrics": metrics,
    }


def _fit(trainer: L.Trainer, system, datamodule, ckpt_path) -> None:
    """``trainer.fit``, but Ctrl-C surfaces as ``KeyboardInterrupt`` (the command exits 130).

    Lightning catches the interrupt, shuts down gracefully (the run ends KILLED, see
    ``RunLogger``), sets SIGINT to be ignored and calls ``exit(1)``, which would read as an
    ordinary failure. The SIGINT handler of before the fit is put back.
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as exc:
        if trainer.interrupted:
            raise KeyboardInterrupt from exc
        raise
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


def build_trainer(t: DictConfig, **kwargs) -> L.Trainer:
    """The Lightning Trainer for the ``trainer`` section; ``kwargs``: callbacks, logger, plugins, ...

    Building it reads the launcher's environment and fixes this process's global rank, node rank
    and world size: a second node's processes learn here that they are not rank 0.
    ``cudnn.benchmark`` is on unless the run asks to be deterministic: training batches have
    one shape (the short last one is dropped), so each convolution's fastest kernel is found once.
    """
    check_strategy(t.strategy, t.accelerator)  # before precision=auto initialises CUDA
    try:
        return L.Trainer(
            max_epochs=t.max_epochs, precision=resolve_precision(t.precision, t.accelerator),
            accelerator=t.accelerator, devices=t.devices,
            num_nodes=t.num_nodes, strategy=t.strategy, deterministic=t.deterministic,
            log_every_n_steps=t.log_every_n_steps, limit_train_batches=t.limit_train_batches,
            limit_val_batches=t.limit_val_batches, enable_progress_bar=t.enable_progress_bar, num_sanity_val_steps=0,
            enable_model_summary=t.enable_progress_bar, benchmark=not t.deterministic, **kwargs,
        )
    except (MisconfigurationException, ValueError, TypeError) as exc:  # e.g. strategy=dpp, accelerator=gpu on a CPU
        first = str(exc).splitlines()[0]
        raise UserError(f"trainer.accelerator/devices/num_nodes/strategy/precision: {first}") from exc


def _log_config_artifact(logger: MLFlowLogger, config: dict) -> None:
    """``config.yaml``: the run's ``public_config``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        OmegaConf.save(OmegaConf.create(config), path)
        logger.experiment.log_artifact(logger.run_id, path)


def _check_training_size(cfg: DictConfig, size_multiple: int) -> None:
    """Each side must hold at least one pixel at the U-Net's deepest level (2**depth at the input)."""
    height, width = training_size(cfg.data.height, cfg.data.width, size_multiple)
    if min(height, width) < size_multiple:
        raise UserError(f"training size {height}x{width} is too small for model.depth={cfg.model.depth}: each "
                        f"side must be at least {size_multiple} (2**depth); raise data.height/data.width or lower "
                        "model.depth")


def _report_skipped(logger: MLFlowLogger, skipped: list) -> None:
    """data.on_bad_file=skip: say which files were left out (stderr and a run artifact)."""
    if not skipped or rank_zero_only.rank != 0:
        return
    lines = [f"{b.path}: {b.reason}" for b in skipped]
    print(f"lk-segment: skipped {len(skipped)} bad file(s) (data.on_bad_file=skip):\n  " + "\n  ".join(lines),
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "skipped_files.txt")
        Path(path).write_text("\n".join(lines) + "\n")
        logger.experiment.log_artifact(logger.run_id, path)
