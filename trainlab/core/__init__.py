"""The bottom layer, shared by everything above it: user errors, where and how trainlab writes files (atomic writes,
locks, the cache folder), the metric names, the typed settings schema, the hardware a process runs on, progress
display and did-you-mean hints. Nothing here imports another trainlab layer."""
