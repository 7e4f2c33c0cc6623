"""Computations over what a run recorded, with no files of their own: the diagnosis of a run's curves, activation
statistics and feature-map grids, sweep groups and seed statistics, and the figures of curves and confusions."""
