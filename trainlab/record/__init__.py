"""What a run leaves on disk, and the one owner of each fact about it: what a run folder is and holds (`run_dir`),
checkpoints and how `resume=`/`ckpt=` find them, the config stored in a checkpoint, exports, the per-epoch record
(metrics.csv, TensorBoard, plots, loggers), the environment, and a sweep's folder."""
