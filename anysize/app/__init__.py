"""``anysize app``: a web UI over the same registry, API and PNG metadata as the command line.

* :mod:`anysize.app.handlers`: what the page and the named API endpoints do, as plain functions
  over :mod:`anysize.api` (one model shared by every request, the device queue, PNG in and out);
* :mod:`anysize.app.controls`: method options as form controls, from the options metadata alone;
* :mod:`anysize.app.ui`: the Gradio Blocks page and its endpoints (``/generate``, ``/compare``,
  ``/upscale``, ``/read_png``);
* :mod:`anysize.app.server`: launching it (127.0.0.1 by default, password, no analytics, nothing
  fetched from the internet).

Gradio is imported only by ``ui`` and ``server`` (extra ``[app]``).
"""
