export default { async fetch(request) { return new Response("hi\n"); } };
