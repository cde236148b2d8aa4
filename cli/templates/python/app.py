"""{{name}}: answers {"message": "<greeting>, <name>!", "method", "body", "calls", "upstream"}.

- `?name=` picks the name; the greeting is the `greeting` setting in thaw.toml;
- a body must be JSON (anything else is a 400);
- `calls` counts the requests so far, in the function's key-value store, which also keeps
  the last body (`thaw kv get {{name}} last-body`);
- `upstream` is what the configured `upstream` URL answered (None when there is none);
- each request logs a structured line: `thaw logs {{name}}` shows it;
- `event` is the request's CloudEvents attributes when thaw sent it for a schedule, an
  asynchronous invocation (`Prefer: respond-async`) or a queue message (None otherwise).

Deployed as source: thaw runs it on the host's Python engine, no build step. `handle` is a
plain function, a `Request` in, a `Response` out; thaw (config, kv, log, http, Event) and
thaw_http are part of the engine.
"""

import json

from thaw import Event, ThawError, config, http, kv, log
from thaw_http import Request, Response


def handle(request: Request) -> Response:
    name = request.query.get("name", "world")
    greeting = config.get("greeting") or "Hello"
    body = None
    if request.body:
        try:
            body = json.loads(request.body)
        except ValueError as e:
            return Response.json({"error": f"invalid JSON body: {e}"}, status=400)
    try:
        store = kv.open("default")
        calls = store.increment("calls")
        if body is not None:
            store.set_json("last-body", body)
        target = config.get("upstream")
        upstream = http.fetch(target).text() if target else None
    except ThawError as e:
        # An outbound failure is the upstream's fault (502); the store's or the configuration's, ours.
        ours = e.kind in ("config", "kv", "quota", "no-such-store", "access-denied")
        return Response.json({"error": str(e), "kind": e.kind}, status=500 if ours else 502)
    log.info("greeted", name=name, calls=calls)
    event = Event.from_request(request)
    return Response.json(
        {
            "message": f"{greeting}, {name}!",
            "method": request.method,
            "body": body,
            "calls": calls,
            "upstream": upstream,
            "event": event.as_dict() if event else None,
        }
    )
