"""Evaluation tools (nothing in the library imports them):

* :mod:`~anysize.eval.composition` and :mod:`~anysize.eval.benchmark`: composition metrics for the
  toy world and the benchmark that generates and analyses images with a method;
* :mod:`~anysize.eval.metrics` and :mod:`~anysize.eval.run`: FID/KID (resized, crops, vs native size),
  IS and CLIP score on torchmetrics, and one ``anysize eval metrics`` run;
* :mod:`~anysize.eval.timing`: synchronised timing, peak memory, alternating runs (shared with
  ``anysize bench`` and ``benchmarks/``); :mod:`~anysize.eval.plots`: sample grids, quality vs time.
  The real-sized random-weight denoisers that ``anysize bench`` times are built by
  :mod:`anysize.builders`.
"""
