"""Test support: the host/device synchronisation audit (:mod:`~anysize.testing.syncs`) and offline
stand-ins for the evaluation networks (:mod:`~anysize.testing.eval`). The tiny pipelines the tests
run on are built by :mod:`anysize.builders`."""
