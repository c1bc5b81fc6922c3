"""kanal's function runtime: small aiohttp services that call the kanal gateway over gRPC.

Each function is a plain process (``kanal-fn-prompt``, ``kanal-fn-summarize``) serving on
``$PORT`` (default 8080, as Knative sets it) with ``GET /healthz`` and OpenAI-shaped JSON
errors. The same handlers serve the prompt functions inside ``kanal up``.

Layering: this package may import ``kanal.api``, ``kanal.prompts`` and the gRPC stubs in
``kanal.v1``; never the gateway or the operator (tests/unit/test_layers.py).
"""
