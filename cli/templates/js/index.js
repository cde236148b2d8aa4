// {{name}}: answers {"message": "<greeting>, <name>!", "method", "body", "calls", "upstream", "event"}.
// - `?name=` picks the name; the greeting is the `greeting` setting in thaw.toml;
// - a body must be JSON (anything else is a 400);
// - `calls` counts the requests so far, in the function's key-value store, which also keeps
//   the last body (`thaw kv get {{name}} last-body`);
// - `upstream` is what the configured `upstream` URL answered (null when there is none);
// - each request logs a structured line: `thaw logs {{name}}` shows it;
// - `event` is the request's CloudEvents attributes when thaw sent it for a schedule, an
//   asynchronous invocation (`Prefer: respond-async`) or a queue message (null otherwise).
// Deployed as source: thaw runs it on the host's JavaScript engine, no build step. "thaw" is the
// helper module (config, kv, log, fetch, Event), part of the engine.
import { config, Event, fetch, kv, log, ThawError } from "thaw";

async function handle(request) {
  const url = new URL(request.url);
  const name = url.searchParams.get("name") ?? "world";
  // Settings are the host's to give: read them when needed (cheap, no copy kept).
  const greeting = config.get("greeting") ?? "Hello";
  const text = await request.text();
  let body = null;
  if (text.length > 0) {
    try {
      body = JSON.parse(text);
    } catch (e) {
      return json(400, { error: `invalid JSON body: ${e.message}` });
    }
  }
  try {
    const store = kv.open("default");
    const calls = store.increment("calls");
    if (body !== null) store.setJson("last-body", body);
    const target = config.get("upstream");
    const upstream = target ? await (await fetch(target)).text() : null;
    log.info("greeted", { name, calls });
    const event = Event.from(request);
    return json(200, { message: `${greeting}, ${name}!`, method: request.method, body, calls, upstream, event });
  } catch (e) {
    // An outbound failure is the upstream's fault (502); the store's or the configuration's, ours.
    if (e instanceof ThawError) return json(OURS.has(e.kind) ? 500 : 502, { error: e.message, kind: e.kind });
    throw e;
  }
}

const OURS = new Set(["config", "kv", "quota", "no-such-store", "access-denied"]);

function json(status, value) {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json" },
  });
}

export default { fetch: handle };
