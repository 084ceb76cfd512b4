"""Evaluation: composition metrics for the toy world (:mod:`~anysize.eval.composition`) and the
benchmark that generates and analyses images with a method (:mod:`~anysize.eval.benchmark`)."""
