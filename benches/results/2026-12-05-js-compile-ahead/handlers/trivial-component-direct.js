const target = { async fetch(request) { return new Response("hi\n"); } };
addEventListener("fetch", (event) => event.respondWith(target.fetch(event.request)));
