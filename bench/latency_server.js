// The latency server of bench/latency.py: every GET is answered after a fixed delay.
//
//   node bench/latency_server.js [--host 127.0.0.1] [--port 0] [--delay 100]
//
// Prints one JSON line ({"port": P, "pid": N}) once it listens, then serves until SIGTERM.
// Node's `http` module and one setTimeout per request: timers of one duration share one list
// in Node, so 1,000+ waiting requests cost almost nothing, and the client being measured keeps
// the other core. Every page is the same prebuilt ~2.5 KiB buffer (no per-request rendering);
// /robots.txt is a 404 at once; /__stats (at once, JSON) reports counters and peaks since the
// last /__stats?reset, so the harness can see how many requests a client really had in flight.
"use strict";

const http = require("http");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "0"));
const delay = Number(arg("--delay", "100"));

const WORDS = ["crawler", "queue", "worker", "redis", "limiter", "engine", "fetch", "record",
  "latency", "socket", "thread", "event", "loop", "batch", "host", "token", "bucket", "page"];
function page() {
  const paras = [];
  for (let p = 0; p < 6; p++) {
    const words = [];
    for (let w = 0; w < 55; w++) words.push(WORDS[(p * 7 + w * 5) % WORDS.length]);
    paras.push(`<p>${words.join(" ")}</p>`);
  }
  const links = [];
  for (let j = 0; j < 8; j++) links.push(`<li><a href="/p/${j * 997}">page ${j}</a></li>`);
  return Buffer.from(
    '<!doctype html>\n<html><head><meta charset="utf-8"><title>Latency page</title></head>\n' +
    `<body><h1>Latency page</h1>\n${paras.join("\n")}\n<ul>\n${links.join("\n")}\n</ul>\n` +
    "</body></html>\n");
}

const BODY = page();
const PAGE_HEADERS = [
  "Content-Type", "text/html; charset=utf-8",
  "Content-Length", String(BODY.length),
];
const NOT_FOUND = Buffer.from("not found\n");
const NOT_FOUND_HEADERS = [
  "Content-Type", "text/plain", "Content-Length", String(NOT_FOUND.length),
];

const stats = {
  requests: 0, pages: 0, other: 0, inflight: 0, peak_inflight: 0,
  connections: 0, open_connections: 0, peak_connections: 0, body_bytes: BODY.length,
};

function answer(res) {
  stats.inflight--;
  if (!res.socket || res.socket.destroyed) return; // the client gave up: nothing to write
  res.writeHead(200, PAGE_HEADERS);
  res.end(BODY);
}

const server = http.createServer((req, res) => {
  const url = req.url;
  if (url.startsWith("/__stats")) {
    const out = Buffer.from(JSON.stringify(stats));
    if (url.includes("reset")) {
      stats.peak_inflight = stats.inflight;
      stats.peak_connections = stats.open_connections;
    }
    res.writeHead(200, ["Content-Type", "application/json", "Content-Length",
      String(out.length)]);
    res.end(out);
    return;
  }
  counted(req.socket);
  stats.requests++;
  if (req.method !== "GET" || url === "/robots.txt") {
    stats.other++;
    res.writeHead(404, NOT_FOUND_HEADERS);
    res.end(NOT_FOUND);
    return;
  }
  stats.pages++;
  if (++stats.inflight > stats.peak_inflight) stats.peak_inflight = stats.inflight;
  setTimeout(answer, delay, res);
});

server.keepAliveTimeout = 120000; // ms: idle keep-alive connections stay (clients reuse them)
server.headersTimeout = 60000;
server.requestTimeout = 0;
server.maxRequestsPerSocket = 0;
// A connection counts once it asks for something else than /__stats: the harness's own
// polling connections stay out of the client's numbers.
function counted(sock) {
  if (sock.counted) return;
  sock.counted = true;
  stats.connections++;
  if (++stats.open_connections > stats.peak_connections) {
    stats.peak_connections = stats.open_connections;
  }
  sock.on("close", () => { stats.open_connections--; });
}
server.on("connection", (sock) => { sock.setNoDelay(true); });
server.on("clientError", (err, sock) => { sock.destroy(); });

server.listen({ host, port, backlog: 4096 }, () => {
  process.stdout.write(JSON.stringify({ port: server.address().port, pid: process.pid }) + "\n");
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
