"""lk_segment: U-Net kernel decompositions on Carvana, tracked in MLflow."""

__version__ = "0.1.0"
