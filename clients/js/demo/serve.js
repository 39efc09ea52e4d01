// Serves the demo page and the package (dist/, node_modules/) on loopback, no dependencies:
//   npm run build && npm run demo   → open the printed address
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".map": "application/json" };

/** Starts the server on `port` (0: any free one); resolves with it and its address. */
export function serve(port = 0, host = "127.0.0.1") {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = join(root, path.endsWith("/") ? join(path, "index.html") : path);
    if (!file.startsWith(root) || path.includes("..")) return void res.writeHead(403).end();
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((resolve) =>
    server.listen(port, host, () => resolve({ server, url: `http://${host}:${server.address().port}/demo/` })),
  );
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const { url } = await serve(Number(process.env.PORT ?? 8080));
  console.log(`demo on ${url}  (add ?url=ws://host:port/ to preset the gateway)`);
}
