"""anysize's toy world: a procedural one-object dataset, the small model trained on it, and the
composition metrics and benchmark that measure what methods do to it.

* :mod:`anysize.toy.data` — images of one coloured shape on a plain or two-tone background, with
  captions; deterministic from a seed, generated on the fly;
* :mod:`anysize.toy.train` — trains a complete SD 1.5-structured ``StableDiffusionPipeline`` on them
  from scratch (``python -m anysize.toy.train``); its result ships as anysize's default model;
* :mod:`anysize.toy.composition` — how many objects of the prompted colour an image shows, and
  whether the largest has the prompted colour and shape (plain image analysis), tile-seam visibility;
* :mod:`anysize.toy.benchmark` — the composition benchmark: n toy-world prompts generated with a
  method at a size, each image analysed (``anysize eval composition``);
* :mod:`anysize.toy.demo` — ``anysize demo``: every method side by side on the toy model.
"""
