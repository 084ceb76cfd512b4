"""anysize's toy world: a procedural one-object dataset, and the small model trained on it.

* :mod:`anysize.toy.data` — images of one coloured shape on a plain or two-tone background, with
  captions; deterministic from a seed, generated on the fly;
* :mod:`anysize.toy.train` — trains a complete SD 1.5-structured ``StableDiffusionPipeline`` on them
  from scratch (``python -m anysize.toy.train``); its result ships as anysize's default model.
"""
