"""The data: Kaggle layout, split by car, the cache, augmentation on either device and its seeds."""
