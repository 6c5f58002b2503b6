"""What a training run is made of besides the model and the data, one concern per module:

- ``callbacks``: the per-epoch performance figures and the share of the machine each epoch had;
- ``checkpointing``: checkpoints that survive a kill, load without unpickling, and fuse for deployment;
- ``guard``: a NaN or infinite loss never reaches the weights, and the run stops;
- ``distributed``: what Lightning's DDP leaves to the project (validation without repeats);
- ``full_res``: the score Kaggle gives, per photo at full resolution, during training;
- ``run_records``: system metrics and data lineage logged beside the metrics.
"""
