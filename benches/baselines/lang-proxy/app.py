"""The Python template's answer without thaw's interfaces (configuration, state, logs), for
the side-by-side rows with `wasmtime serve`, which serves only what wasi:http/proxy imports:
the same engine (componentize-py 0.25), the template's thaw_http, a JSON answer."""

import json

from thaw_http import Response, serve


def handle(request):
    name = request.query.get("name", "world")
    body = json.loads(request.body) if request.body else None
    return Response.json({"message": f"Hello, {name}!", "method": request.method, "body": body})


IncomingHandler = serve(handle)
