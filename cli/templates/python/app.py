"""{{name}}: answers {"message": "<GREETING>, <name>!", "method": ..., "body": ...}.

`?name=` picks the name, the GREETING environment variable (set in thaw.toml) the greeting;
a body must be JSON (anything else is a 400). `handle` is a plain function: thaw_http turns
the wasi:http request into a `Request` and the returned `Response` back.
"""

import json
import os

from thaw_http import Request, Response, serve


def handle(request: Request) -> Response:
    name = request.query.get("name", "world")
    greeting = os.environ.get("GREETING", "Hello")
    body = None
    if request.body:
        try:
            body = json.loads(request.body)
        except ValueError as e:
            return Response.json({"error": f"invalid JSON body: {e}"}, status=400)
    return Response.json(
        {"message": f"{greeting}, {name}!", "method": request.method, "body": body}
    )


IncomingHandler = serve(handle)
