"""Speed and memory of the project, measured side by side in one process: ``make bench``.

    lk-segment bench --out bench.json                      # the CPU default (about 1.5 minutes on 2 cores)
    lk-segment bench --height 1024 --width 1024            # on a GPU: training-size steps and kernels
    lk-segment bench --variants 3x3 --height 64 model.width=4 model.depth=2 --settings 32

Every claim is a ratio of two figures taken here, in this run, on this machine, each a median
of timed repeats after warm-up (``timing``: CUDA events on a GPU). One module per measurement:

- ``peaks``: the bf16 / float32 matmul peak and the device-to-device copy bandwidth;
- ``steps``: images/s of a training step, the project's (Lightning) against the plain-PyTorch
  reference, for each variant, with the roofline beside it (``roofline``: the FLOPs and bytes
  a step must cost at least);
- ``settings``: one variant under bf16 autocast, channels_last and torch.compile;
- ``pairs``: where each step goes (``torch.profiler``), and 1x5/5x5, 3x3/5x5 timed in turns;
- ``loader``: the data loader against the model's consumption;
- ``inference``: ``make predict``'s latency per image, replk fused against unfused;
- ``kernels``: large depthwise kernels, native against FFT.

``run`` runs them in order into typed ``results``; ``tables`` prints them, ``output`` writes
the JSON file and the MLflow run (experiment ``bench``).
"""

from lk_segment.bench.config import BenchConfig, bench_config_from
from lk_segment.bench.output import write_results
from lk_segment.bench.results import BenchResults
from lk_segment.bench.run import run_bench
from lk_segment.bench.tables import table

__all__ = ["BenchConfig", "BenchResults", "bench_config_from", "run_bench", "table", "write_results"]
