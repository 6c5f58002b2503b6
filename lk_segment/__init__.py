"""lk_segment: U-Net kernel decompositions on Carvana, tracked in MLflow."""

import os

__version__ = "0.1.0"

# albumentations asks the network for a newer version when it is imported, unless this is set: set here,
# where every import of the package (commands, tests, the logged MLflow model, the processes they start)
# passes before albumentations is imported.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
