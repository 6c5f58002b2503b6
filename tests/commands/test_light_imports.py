"""Commands that only read or serve the store start without the training stack: Lightning alone is 5.5 s of
imports on a 2-core CPU, paid by every `make ui`, `make report`, `make register` and sweep parent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LIGHT = ["lk_segment.commands.cli", "lk_segment.commands.server", "lk_segment.tracking", "lk_segment.model_registry",
         "lk_segment.comparison.records", "lk_segment.comparison.study_report", "lk_segment.comparison.study",
         "lk_segment.comparison.sweep"]


@pytest.mark.parametrize("module", LIGHT)
def test_a_store_command_module_imports_no_lightning(module):
    script = (f"import sys, json, {module}; "
              "print(json.dumps([m for m in ('lightning', 'torchmetrics') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == []
