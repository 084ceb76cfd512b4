"""Evaluation tools (nothing in the library imports them):

* :mod:`~anysize.eval.metrics` and :mod:`~anysize.eval.run`: FID/KID (resized, crops, vs native size),
  IS and CLIP score on torchmetrics, and one ``anysize eval metrics`` run;
* :mod:`~anysize.eval.timing`: synchronised timing, peak memory, alternating runs (shared with
  ``anysize bench`` and ``benchmarks/``); :mod:`~anysize.eval.plots`: sample grids, quality vs time.
  The real-sized random-weight denoisers that ``anysize bench`` times are built by
  :mod:`anysize.builders`; the toy world's composition metrics and benchmark are in
  :mod:`anysize.toy`.
"""
