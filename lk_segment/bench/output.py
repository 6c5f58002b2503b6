"""The results as a JSON file and as an MLflow run of the experiment ``bench``."""

from __future__ import annotations

import json
from pathlib import Path

from lk_segment.bench.results import BenchResults


def numeric_leaves(d: dict | list, prefix: str = "") -> dict[str, float]:
    """{'steps/3x3/ratio_32': 1.9, ...}: every number of the results under its path (the
    depthwise rows, a list, keyed by kernel, dtype and shape); the config and the env left out."""
    out: dict[str, float] = {}
    if isinstance(d, list):
        items = ((f"k{r['k']}_{r['dtype']}_{'x'.join(map(str, r['shape']))}", r) for r in d)
    else:
        items = ((k, v) for k, v in d.items() if k not in ("config", "env"))
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict | list) and k not in ("size", "shape", "fft_grid"):
            out.update(numeric_leaves(v, key + "/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def write_results(results: BenchResults, out: str | Path, experiment: str = "bench") -> str:
    """The JSON file and an MLflow run in ``experiment`` (metrics, params, the JSON); the run id."""
    import mlflow

    from lk_segment.tracking import experiment_id, fluent_store

    data = results.to_dict()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    with fluent_store(), mlflow.start_run(run_name=f"bench-{results.env.device}",
                                          experiment_id=experiment_id(experiment)) as run:
        mlflow.log_params({k: str(v)[:250] for k, v in data["config"].items()})
        mlflow.set_tags({"device_name": results.env.device_name, "torch": results.env.torch,
                         "tf32": str(results.env.tf32)})
        mlflow.log_metrics({k.replace("+", "_"): v for k, v in numeric_leaves(data).items()})
        mlflow.log_artifact(str(out))
        return run.info.run_id
