"""``mobilevlm serve``: the OpenAI chat-completions API over one loaded model (the [serve]
extra: Starlette and uvicorn). :func:`~mobilevlm.serve.app.build_app` makes the ASGI app;
:mod:`~mobilevlm.serve.protocol` maps OpenAI's format onto the runtime."""
