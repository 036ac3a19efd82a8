"""An HTTP server for one model: ``python -m charformer.serve --ckpt DIR [--adapter NAME=DIR ...]``.

One process holds one base checkpoint and any number of adapters for it, and answers JSON over HTTP:
segmentation, entity tagging, classification and generation, each where a loaded model can do it, with
requests that arrive together run as one batch. The modules, in the order a request meets them:

* `auth`: the bearer token and the loopback-only rule for a server without one;
* `limits`: body size, texts, characters, generation length, concurrency; reading and checking a request;
* `app`: the routes and the path of a request through the guards to the model (Starlette on uvicorn);
* `batching`: dynamic batching of concurrent requests;
* `models`: loading the base and its adapters, and the predictions (the only module that imports the
  project's model code);
* `metrics`: Prometheus counters and histograms at ``/metrics``;
* `page`: the static page at ``/`` to try it in a browser.

`__main__` parses the command line and runs the server.
"""
