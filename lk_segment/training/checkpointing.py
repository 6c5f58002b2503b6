"""Checkpoints that survive a kill and cannot run code.

A checkpoint is written to a temporary file beside its target, flushed to disk and only then
renamed over it (``os.replace`` is atomic on POSIX), so a kill during a save leaves the
previous good ``last.ckpt`` in place, never a truncated one; the next save there removes the
killed one's temporary file. Checkpoints are pickles: they
are read only with ``torch.load(weights_only=True)``, which refuses any object that would
need arbitrary code to rebuild, and the refusal says so in one line.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

from lk_segment.config import DataConfig
from lk_segment.errors import UserError
from lk_segment.system import SegmentationSystem


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file in the same folder: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not *.ckpt, so that nothing globbing for checkpoints ever picks up a half-written one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete what saves of ``path`` killed mid-write left (``.<name>.<pid>.tmp`` of dead processes)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """The checkpoint as a dict, loaded with ``weights_only=True``; a ``UserError`` that says why not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist: check the path or the run id")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(describe_load_error(path, exc)) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"checkpoint {str(path)!r} is not a Lightning checkpoint (no state_dict): "
                        "pass a .ckpt written by `lk-segment train`")
    return checkpoint


def load_system(ckpt: str | Path, map_location: str = "cpu") -> SegmentationSystem:
    """The trained system in eval mode, rebuilt from the checkpoint's own hyper-parameters."""
    return system_from_checkpoint(ckpt, load_checkpoint(ckpt, map_location=map_location)).eval()


def system_from_checkpoint(path: str | Path, checkpoint: dict) -> SegmentationSystem:
    """A ``SegmentationSystem`` with the weights of ``checkpoint`` (already loaded from ``path``)."""
    try:
        system = SegmentationSystem(**checkpoint["hyper_parameters"])
        system.load_state_dict(checkpoint["state_dict"])
        system.on_load_checkpoint(checkpoint)
    except Exception as exc:  # missing hyper-parameters, other keys or shapes: another model's file
        raise UserError(describe_load_error(Path(path), exc)) from exc
    return system


def fuse_checkpoint(src: str | Path, dst: str | Path, deploy: bool = False) -> Path:
    """Write ``dst``: the checkpoint ``src`` with its model re-parameterised (``replk``'s deploy-time form)
    and ``model.fused`` set in its hyper-parameters, so it reloads into the fused architecture
    (``load_system``) and predicts the same masks. With ``deploy``, only what prediction reads: the fused
    weights, the model and the training size (no optimizer state, no data folders, no other keys);
    else Lightning's other keys are kept as they were."""
    checkpoint = load_checkpoint(src)  # a missing or unreadable file stops here with a UserError
    system = system_from_checkpoint(src, checkpoint).eval()
    system.model.reparameterize()
    trained = checkpoint["hyper_parameters"]
    model = {**trained["model"], "fused": True}
    if deploy:
        data = trained.get("data") or {}
        size = {"height": data.get("height", DataConfig.height), "width": data.get("width")}
        checkpoint = {"hyper_parameters": {"model": model, "optim": {}, "data": size}}
    else:
        checkpoint["hyper_parameters"]["model"] = model
    checkpoint["state_dict"] = system.state_dict()
    atomic_torch_save(checkpoint, dst)
    return Path(dst)


def describe_load_error(path: Path, exc: BaseException) -> str:
    """One line for a checkpoint that could not be loaded: unsafe, corrupt, or another model's."""
    text = str(exc)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)  # torch names the global it would have to import
    if not unsafe and (isinstance(exc, (EOFError, zipfile.BadZipFile)) or not zipfile.is_zipfile(path)):
        return (f"checkpoint {str(path)!r} is corrupt or truncated (not a complete torch archive): "
                "use another checkpoint of the run (best-*.ckpt or last.ckpt) or train again")
    if unsafe or re.search(r"weights only load failed", text, re.I):
        what = f" ({unsafe.group(1)})" if unsafe else ""
        return (f"refusing to load checkpoint {str(path)!r}: it holds an object{what} that only full unpickling "
                "could rebuild, which can run arbitrary code; lk_segment loads checkpoints with "
                "torch.load(weights_only=True) only: use a checkpoint written by `lk-segment train`")
    first = text.splitlines()[0][:160] if text else type(exc).__name__
    return (f"checkpoint {str(path)!r} is not a checkpoint of this model ({first}): pass a .ckpt written by "
            "`lk-segment train` with the same model.* config")


def resume_point(cfg) -> tuple[str, Path]:
    """(run id, its last.ckpt) for ``cfg.resume`` (a run id or ``last``), checked before anything is written."""
    from lk_segment.tracking import get_run, last_run_id

    run_id = last_run_id(cfg.experiment, cfg.variant) if cfg.resume == "last" else cfg.resume
    get_run(run_id, hint="(resume=<run id> or resume=last)")
    path = Path(cfg.checkpoint_dir) / run_id / "last.ckpt"
    if not path.is_file():  # the run may have trained on another machine: its last.ckpt is in the store
        fetch_last_checkpoint(run_id, path)
    checkpoint = load_checkpoint(path)
    trained = (checkpoint.get("hyper_parameters") or {}).get("model")
    wanted = OmegaConf.to_container(cfg.model, resolve=True)
    if trained != wanted:
        diff = sorted(k for k in set(trained or {}) | set(wanted) if (trained or {}).get(k) != wanted.get(k))
        raise UserError(f"cannot resume run {run_id!r}: its checkpoint was trained with another model "
                        f"(differs in {', '.join('model.' + k for k in diff)}); resume with the run's own config "
                        "(its config.yaml artifact)")
    return run_id, path


def fetch_last_checkpoint(run_id: str, path: Path) -> None:
    """Download the run's ``checkpoints/last.ckpt`` artifact to ``path`` (atomically), or say why not."""
    import shutil
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from lk_segment.tracking import CHECKPOINT_ARTIFACT_DIR, tracking_uri

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{CHECKPOINT_ARTIFACT_DIR}/last.ckpt", dst_path=tmp,
                tracking_uri=tracking_uri())
        except (MlflowException, OSError) as exc:
            raise UserError(f"cannot resume run {run_id!r}: no {str(path)!r} here and no checkpoints/last.ckpt among "
                            "its artifacts (did it finish an epoch?); start a new run without resume") from exc
        shutil.move(local, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and safe (``weights_only``) reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None):
        return load_checkpoint(path, map_location=map_location)
