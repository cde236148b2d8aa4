// The JS template's answer without thaw's interfaces (configuration, state, logs), for the
// side-by-side rows with `wasmtime serve`, which serves only what wasi:http/proxy imports:
// the same engine (componentize-js 0.23), the same fetch-style handler, a JSON answer.
async function handle(request) {
  const url = new URL(request.url);
  const name = url.searchParams.get("name") ?? "world";
  const text = await request.text();
  const body = text.length > 0 ? JSON.parse(text) : null;
  return new Response(JSON.stringify({ message: `Hello, ${name}!`, method: request.method, body }), {
    headers: { "content-type": "application/json" },
  });
}

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));
