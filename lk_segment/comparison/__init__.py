"""Variants side by side: the sweep that trains them and the report that concludes from them.

- ``sweep``: jobs (a variant with its seed, fold and overrides) trained in fresh processes as nested
  runs of one MLflow parent run, resumable; ``compare()``, the ad-hoc sweep (``make compare``).
- ``study``: a sweep described by ``configs/study/<name>.yaml``: k-fold by car, every variant
  (``make study``).
- ``records``: a comparison's runs read from MLflow once.
- ``statistics``: the car bootstrap, the verdicts, flattening, Dice at equal time.
- ``plots``: every plot of both reports, from numbers already computed;
- ``report`` / ``study_report``: tables (Markdown, CSV) and conclusions generated from the records.
"""
