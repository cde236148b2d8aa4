addEventListener("fetch", (event) => event.respondWith(new Response("hi\n")));
