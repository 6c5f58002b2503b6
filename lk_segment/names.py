"""Every metric and parameter name a training run records in MLflow, written once; and the headline.

Metrics are ``<group>/<name>`` (MLflow groups them by the prefix in its charts). Parameters are the resolved
config's dotted keys (``data.height``) and what training adds under the same rule (``data.train_height``);
``model/params``, ``model/gflops`` and ``model/receptive_field_px`` keep the slash they were first logged
with, so the runs already in a store still compare with new ones.
"""

# -- per epoch, from the LightningModule (lk_segment/system.py)
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
VAL_DICE = "val/dice"  # Dice of all validation pixels pooled, at the training size: what checkpoints monitor
VAL_DICE_BEST = "val/dice_best"
VAL_IOU = "val/iou"
LEARNING_RATE = "train/lr"

# -- per epoch, from PerfMonitor (lk_segment/training/callbacks.py)
EPOCH_TIME = "perf/epoch_time_s"
TRAIN_TIME_CUM = "perf/train_time_cum_s"
IMAGES_PER_S = "perf/train_images_per_s"
OWN_CPU_SHARE = "perf/own_cpu_share"
OTHERS_CPU_SHARE = "perf/others_cpu_share"
# An epoch counts as having shared the machine when other processes used more than this share of
# all its cores while it trained (a quiet machine's background stays near 0.01). Its times are then
# not the model's: the study report leaves such runs out of its cost columns and says why.
SHARED_MACHINE_THRESHOLD = 0.10
LOAD_AVG = "perf/load_avg_1m"
CPU_PEAK_RSS = "perf/cpu_peak_rss_mb"
GPU_PEAK_MEM = "perf/gpu_peak_mem_mb"
GPU_PEAK_RESERVED = "perf/gpu_peak_reserved_mb"

# -- full resolution, Kaggle's metric (lk_segment/training/full_res.py)
DICE_FULL = "val/dice_full"
DICE_FULL_WORST = "val/dice_full_worst"
DICE_FULL_BEST = "val/dice_full_best"  # of the best checkpoint (by VAL_DICE), once per run
DICE_FULL_BEST_WORST = "val/dice_full_best_worst"
FULL_RES_EVAL_TIME = "perf/full_res_eval_s"
CSV_ARTIFACT_DIR = "full_res"  # the run's per-image CSVs: full_res/epoch_<E>.csv, full_res/best.csv

# -- parameters training adds to the config's (lk_segment/commands/train.py)
MODEL_PARAMS = "model/params"
MODEL_GFLOPS = "model/gflops"
RECEPTIVE_FIELD = "model/receptive_field_px"
DEVICE_NAME = "trainer.device_name"
TRAIN_HEIGHT = "data.train_height"
TRAIN_WIDTH = "data.train_width"

# -- the model registry (make register, make compare's champion)
MODEL_NAME = "model"  # the run's MLflow model: runs:/<run id>/model (lk_segment/serving.py)
REGISTERED_MODEL = "lk-segment"
CHAMPION = "champion"

# -- where commands write when not told (relative to the working folder, as every make target runs)
REPORTS_DIR = "reports"  # make compare: reports/<experiment>/; make study: reports/study-<name>/
ERF_IMAGES = 16  # validation images an effective receptive field is averaged over (make erf)

# The headline of every run and every comparison: the best checkpoint's mean per-photo Dice at the photo's own
# resolution, the score Kaggle gives. A comparison whose runs lack it (trained before it existed) falls back on
# the best VAL_DICE and says so.
HEADLINE = DICE_FULL_BEST
