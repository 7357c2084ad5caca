// A minimal goim WebSocket client in plain browser JS, driven by
// tests/browser_ws.rs. It speaks the goim packet format (16-byte big-endian
// header, one packet per binary frame, pushes inside op-9 containers) and
// records every step as one line in <pre id="log"> for the test to read
// from chromium's --dump-dom output.
"use strict";

const HEADER_LEN = 16;
const VERSION = 1;
const OP = {
  HEARTBEAT: 2,
  HEARTBEAT_REPLY: 3,
  DISCONNECT_REPLY: 6,
  AUTH: 7,
  AUTH_REPLY: 8,
  RAW: 9,
};

const params = new URLSearchParams(window.location.search);
const wsUrl = params.get("ws");
const mid = Number(params.get("mid") || "1");
const roomId = params.get("room") || "test://1";
const heartbeatMs = Number(params.get("hb_ms") || "500");
const heartbeatRepliesWanted = Number(params.get("hb_min") || "1");

const logEl = document.getElementById("log");
const statusEl = document.getElementById("status");
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8");

const state = {
  seq: 0,
  authOk: false,
  heartbeatsSent: 0,
  heartbeatReplies: 0,
  sawOnline: false,
  pushes: 0,
  finished: false,
  timer: null,
};

function log(line) {
  logEl.textContent += line + "\n";
}

function setStatus(s) {
  statusEl.textContent = s;
  document.title = "corecast browser client: " + s;
}

function encodePacket(op, body) {
  const buf = new ArrayBuffer(HEADER_LEN + body.length);
  const view = new DataView(buf);
  view.setUint32(0, HEADER_LEN + body.length);
  view.setUint16(4, HEADER_LEN);
  view.setUint16(6, VERSION);
  view.setUint32(8, op);
  view.setUint32(12, ++state.seq);
  new Uint8Array(buf, HEADER_LEN).set(body);
  return buf;
}

// Splits a buffer into whole packets; a malformed length ends the walk with
// a logged error rather than an exception.
function parsePackets(buf) {
  const view = new DataView(buf);
  const out = [];
  let at = 0;
  while (at < buf.byteLength) {
    if (buf.byteLength - at < HEADER_LEN) {
      log("ERROR truncated header at " + at);
      break;
    }
    const packetLen = view.getUint32(at);
    const headerLen = view.getUint16(at + 4);
    if (headerLen < HEADER_LEN || packetLen < headerLen || at + packetLen > buf.byteLength) {
      log("ERROR bad lengths packet=" + packetLen + " header=" + headerLen);
      break;
    }
    out.push({
      op: view.getUint32(at + 8),
      seq: view.getUint32(at + 12),
      body: buf.slice(at + headerLen, at + packetLen),
    });
    at += packetLen;
  }
  return out;
}

function send(op, body) {
  ws.send(encodePacket(op, body));
}

function heartbeat() {
  if (ws.readyState !== WebSocket.OPEN) return;
  send(OP.HEARTBEAT, new Uint8Array(0));
  state.heartbeatsSent++;
}

function finish(outcome) {
  if (state.finished) return;
  state.finished = true;
  setStatus(outcome);
  log("FINISH " + outcome);
  // Heartbeats keep going: the test checks server-side that this
  // connection is still open and authenticated after /done.
  fetch("/done?outcome=" + encodeURIComponent(outcome)).catch(() => {});
}

function checkDone() {
  if (state.authOk && state.sawOnline && state.pushes > 0 &&
      state.heartbeatReplies >= heartbeatRepliesWanted) {
    finish("done");
  }
}

function onPacket(p) {
  switch (p.op) {
    case OP.AUTH_REPLY:
      log("AUTH_REPLY op=8 len=" + p.body.byteLength +
          (p.body.byteLength ? " body=" + decoder.decode(p.body) : ""));
      if (p.body.byteLength === 0) {
        state.authOk = true;
        setStatus("authenticated");
        heartbeat();
        state.timer = setInterval(heartbeat, heartbeatMs);
      }
      break;
    case OP.HEARTBEAT_REPLY: {
      const len = p.body.byteLength;
      const online = len === 4 ? new DataView(p.body).getUint32(0) : -1;
      state.heartbeatReplies++;
      if (online >= 1) state.sawOnline = true;
      log("HEARTBEAT_REPLY op=3 len=" + len + " online=" + online +
          " n=" + state.heartbeatReplies);
      break;
    }
    case OP.RAW:
      for (const inner of parsePackets(p.body)) {
        log("PUSH via=op9 op=" + inner.op + " body=" + decoder.decode(inner.body));
        state.pushes++;
      }
      break;
    case OP.DISCONNECT_REPLY:
      log("DISCONNECT op=6 body=" + decoder.decode(p.body));
      break;
    default:
      // goim clients read pushes only from op-9 containers.
      log("UNEXPECTED op=" + p.op + " len=" + p.body.byteLength);
  }
  checkDone();
}

setStatus("connecting");
log("CONNECT " + wsUrl);
const ws = new WebSocket(wsUrl);
ws.binaryType = "arraybuffer";

ws.onopen = () => {
  log("OPEN");
  const auth = {mid: mid, room_id: roomId, platform: "web", accepts: [1000]};
  send(OP.AUTH, encoder.encode(JSON.stringify(auth)));
  log("AUTH_SENT mid=" + mid + " room=" + roomId);
};

ws.onmessage = (ev) => {
  if (!(ev.data instanceof ArrayBuffer)) {
    log("UNEXPECTED text frame");
    return;
  }
  for (const p of parsePackets(ev.data)) onPacket(p);
};

ws.onerror = () => log("WS_ERROR");

ws.onclose = (ev) => {
  log("CLOSE code=" + ev.code + " reason=" + ev.reason);
  if (state.timer) clearInterval(state.timer);
  finish("closed");
};
