// The Node.js baseline: node:http on 127.0.0.1:$PORT.
const http = require("node:http");
http
  .createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("Hello, world!\n");
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
