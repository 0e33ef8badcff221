// A real WebSocket client (Node's own, from undici; run with --experimental-websocket on
// Node 20) for tests/tests/pipeline.rs: opens `url`, sends each message after the echo of
// the one before, closes, and prints what happened as one JSON line.
const [url, ...messages] = process.argv.slice(2);
const out = { opened: false, echoed: [], error: null, closeCode: null };
const finish = () => {
  clearTimeout(timer);
  console.log(JSON.stringify(out));
  process.exit(0);
};
const timer = setTimeout(() => {
  out.error = "timeout";
  finish();
}, 10000);
const ws = new WebSocket(url);
ws.onopen = () => {
  out.opened = true;
  ws.send(messages[0]);
};
ws.onmessage = (e) => {
  out.echoed.push(String(e.data));
  if (out.echoed.length < messages.length) ws.send(messages[out.echoed.length]);
  else ws.close(1000);
};
ws.onerror = (e) => {
  out.error = String(e.message || e.type);
};
ws.onclose = (e) => {
  out.closeCode = e.code;
  finish();
};
