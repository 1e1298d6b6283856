"""Tuning by parameter group: the learning-rate range test."""

from groupwise.tuner.lr_finder import LRRangeTest, RangeTest, multipliers, plot_range_test, smooth

__all__ = ["LRRangeTest", "RangeTest", "multipliers", "plot_range_test", "smooth"]
