// {{name}}: answers {"message": "<GREETING>, <name>!", "method": ..., "body": ...}.
// `?name=` picks the name, the GREETING environment variable (set in thaw.toml) the greeting;
// a body must be JSON (anything else is a 400). A fetch-style handler, as in a service worker.
import { getEnvironment } from "wasi:cli/environment@0.2.10";

// Read at the first request, not at the top level: the top level runs at build time (the
// engine is pre-initialised then), where the environment is not there to read.
let env;
function environment() {
  env ??= Object.fromEntries(getEnvironment());
  return env;
}

async function handle(request) {
  const url = new URL(request.url);
  const name = url.searchParams.get("name") ?? "world";
  const greeting = environment().GREETING ?? "Hello";
  const text = await request.text();
  let body = null;
  if (text.length > 0) {
    try {
      body = JSON.parse(text);
    } catch (e) {
      return json(400, { error: `invalid JSON body: ${e.message}` });
    }
  }
  return json(200, { message: `${greeting}, ${name}!`, method: request.method, body });
}

function json(status, value) {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json" },
  });
}

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));
