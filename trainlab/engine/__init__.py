"""Training and inference: assembling a run from the config (`build`), the one training step (`step`), the epoch
loop and validation (`loop`), the fit from first to last epoch (`fit`), the one way from a checkpoint or export to
a ready model (`ready`), and what they run on: autotuning, process groups (`distributed`), signals and requeues."""
