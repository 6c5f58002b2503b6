"""Adding a variant is one block module and one config file, nothing else edited.

The test follows the README's "Adding a variant" steps on a copy of the project: a toy block
in a new module of lk_segment/blocks/ and configs/variant/toy.yaml. The copy then lists it in
``lk-segment variants``, runs the registry-wide block tests on it, trains it for one batch,
and ``--readme`` gives it its row in the README's table, every other line unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import store_uri, tiny_overrides

REPO = Path(__file__).resolve().parents[2]

TOY_MODULE = '''
from torch import nn

from lk_segment.blocks.layers import conv_bn_act
from lk_segment.blocks.registry import register_block


@register_block("toy")
class ToyBlock(nn.Sequential):
    """One k x k conv -> BN -> ReLU, the smallest block there is (a test's variant)."""

    description = "A toy: one k x k conv -> BN -> ReLU."
    params_formula = "k²·C_in·C_out + 2·C_out"
    formula_symbols = {"k": "kernel_size"}

    def __init__(self, in_chs, out_chs, *, kernel_size=3, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        k = (kernel_size, kernel_size)
        super().__init__(conv_bn_act(in_chs, out_chs, k, norm_layer=norm_layer, act_layer=act_layer))
        self.kernel_size = kernel_size
        self.rf_extent = kernel_size
'''

TOY_VARIANT = """model:
  block: toy
  kernel_size: 3
"""


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the package, its configs, tests and README: the new variant goes there, not here."""
    copy = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("lk_segment", "configs", "tests"):
        shutil.copytree(REPO / folder, copy / folder, ignore=ignore)
    shutil.copy(REPO / "README.md", copy / "README.md")
    (copy / "mlruns").mkdir()
    return copy


def _run(project: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project), "MLFLOW_TRACKING_URI": store_uri(project)}
    proc = subprocess.run([sys.executable, *argv], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_a_toy_variant_added_in_one_module_and_one_file(project, tiny_root):
    (project / "lk_segment" / "blocks" / "toy.py").write_text(TOY_MODULE)
    (project / "configs" / "variant" / "toy.yaml").write_text(TOY_VARIANT)

    # The registry-wide block tests pick it up: forward, backward, memory format, its params_formula.
    tests = _run(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/model/test_blocks.py", "-k", "toy")
    assert "6 passed" in tests.stdout, tests.stdout[-2000:]

    overrides = tiny_overrides(tiny_root, "data.limit_images=32", "data.batch_size=16")  # 1 training batch
    _run(project, "-m", "lk_segment", "train", "-v", "toy", *overrides)
    client = MlflowClient(store_uri(project))
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["variant"] == "toy"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 1

    # `lk-segment variants` lists it: here its README table, which it rewrites with one row more
    before = (project / "README.md").read_text()
    _run(project, "-m", "lk_segment", "variants", "--markdown", "--readme", "README.md")
    after = (project / "README.md").read_text().splitlines(keepends=True)
    (row,) = [line for line in after if line.startswith("| `toy` |")]
    assert "| A toy: one k x k conv -> BN -> ReLU. | k²·C_in·C_out + 2·C_out |" in row
    assert "".join(line for line in after if line != row) == before  # one row more, nothing else
