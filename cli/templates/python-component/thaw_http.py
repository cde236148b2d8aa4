"""A plain-function face for componentize-py's wasi:http bindings.

`serve(handle)` returns the `IncomingHandler` class componentize-py looks for; `handle`
takes a `Request` (method, path, query, headers, body as bytes) and returns a `Response`.
The whole body is read before `handle` runs and written after it returns: simple, and right
for the JSON-sized bodies functions usually see.
"""

import json
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Connect,
    Method_Delete,
    Method_Get,
    Method_Head,
    Method_Options,
    Method_Other,
    Method_Patch,
    Method_Post,
    Method_Put,
    Method_Trace,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok

_METHODS = {
    Method_Get: "GET",
    Method_Head: "HEAD",
    Method_Post: "POST",
    Method_Put: "PUT",
    Method_Delete: "DELETE",
    Method_Connect: "CONNECT",
    Method_Options: "OPTIONS",
    Method_Trace: "TRACE",
    Method_Patch: "PATCH",
}


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes


@dataclass
class Response:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes = b""

    @staticmethod
    def json(value, status: int = 200) -> "Response":
        return Response(
            status, {"content-type": "application/json"}, json.dumps(value).encode()
        )


def _method(method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    return _METHODS.get(type(method), "GET")


def _read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(65536))
        except Exception:  # the stream's end is an error in wasi:io
            break
    stream.__exit__(None, None, None)
    return b"".join(chunks)


def serve(handle):
    class IncomingHandler(exports.IncomingHandler):
        def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
            target = urlsplit(request.path_with_query() or "/")
            req = Request(
                method=_method(request.method()),
                path=target.path,
                query=dict(parse_qsl(target.query)),
                headers={k: v.decode("latin-1") for k, v in request.headers().entries()},
                body=_read_body(request),
            )
            res = handle(req)
            headers = Fields.from_list(
                [(k, v.encode("latin-1")) for k, v in res.headers.items()]
            )
            outgoing = OutgoingResponse(headers)
            outgoing.set_status_code(res.status)
            out_body = outgoing.body()
            ResponseOutparam.set(response_out, Ok(outgoing))
            stream = out_body.write()
            data = res.body
            for start in range(0, len(data), 4096):
                stream.blocking_write_and_flush(data[start : start + 4096])
            stream.__exit__(None, None, None)
            OutgoingBody.finish(out_body, None)

    return IncomingHandler
