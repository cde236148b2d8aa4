const target = { async fetch(request) { return new Response("hi\n"); } };
const fetchOf = target.fetch;
const handler = (request) => fetchOf.call(target, request);
async function dispatch(request) {
  const response = await handler(request);
  if (!(response instanceof Response)) throw new TypeError("not a Response");
  return response;
}
addEventListener("fetch", (event) => event.respondWith(dispatch(event.request)));
