"""The metric names: a public contract shared by metrics.csv, TensorBoard, the console and the reports.
(No heavy imports here: the CLI checks configs against these names before torch is loaded.)"""

METRIC_NAMES = ("loss", "acc1", "acc5", "precision", "recall", "f1", "kappa", "auroc")

# The metrics.csv columns, in order.
COLUMNS = (
    ["epoch", "step"]
    + [f"train/{m}" for m in METRIC_NAMES if m != "auroc"]
    + [f"val/{m}" for m in METRIC_NAMES]
    + ["lr", "grad_norm", "grad_norm_max", "skipped_steps", "time/train_s", "time/val_s", "throughput/train_ips",
       "throughput/train_ips_per_device", "memory/peak_mb"]
)
# With trainer.ema_decay: the averaged weights' validation, appended after COLUMNS.
EMA_COLUMNS = [f"val_ema/{m}" for m in METRIC_NAMES]
