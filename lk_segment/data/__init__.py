"""Carvana data: Kaggle layout, the embedded synthetic set, the decode-once cache, RLE."""
