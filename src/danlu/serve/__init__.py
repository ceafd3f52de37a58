"""The detector as an HTTP service: ``danlu serve MODEL``.

One request path, from the upload to the JSON answer:

* :mod:`~danlu.serve.uploads` checks an upload (bytes, format, pixels from the header) and
  decodes it, in a thread pool, so the model never waits on a JPEG decode;
* :mod:`~danlu.serve.batcher` gathers requests into batches, by size and by wait, and runs
  them on one model thread off the event loop;
* :mod:`~danlu.serve.engine` turns decoded images into detections (letterbox, model,
  post-processing) and answers sliced requests for big uploads;
* :mod:`~danlu.serve.app` is the FastAPI application (routes, limits, token, metrics, the web
  page), :mod:`~danlu.serve.server` runs it under uvicorn with draining on SIGTERM;
* :mod:`~danlu.serve.launch` starts a server process from Python (tests, benchmarks).

Where the model runs is one seam, :mod:`~danlu.serve.dispatch` (a ``Dispatcher``): in this
process (``LocalDispatcher``, the batcher above), in ``danlu worker`` processes over Redis
Streams (:mod:`~danlu.serve.redis_dispatch` on the web side, :mod:`~danlu.serve.worker` and
:mod:`~danlu.serve.redis_queue` on the model side), or in Ray Serve replicas
(:mod:`~danlu.serve.ray_backend`, :mod:`~danlu.serve.ray_replica`). The routes, limits,
metrics and page are the same whichever carries the work.

The service needs the ``serve`` extra: ``pip install 'danlu[serve]'``.
"""
