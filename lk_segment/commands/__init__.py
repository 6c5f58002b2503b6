"""The commands a user types, one module each, and the ``lk-segment`` command line that dispatches to them.

- ``cli``: ``lk-segment <command>`` (what every ``make`` target runs): arguments, one-line errors, exit codes;
- ``train``: one training run recorded in MLflow (``make train``);
- ``predict``: masks and a Kaggle submission for a folder of photos (``make predict``);
- ``evaluate``: full-resolution Dice of a trained model on any labelled folder (``make evaluate``);
- ``server``: the MLflow UI and tracking server and what they refuse to start without (``make ui``, ``make server``);
- ``gpu_check``: the GPU path proved step by step (``make gpu-check``).

The study and compare commands live with their library in ``lk_segment.comparison``, the bench in
``lk_segment.bench``. Nothing below this package imports from it.
"""
