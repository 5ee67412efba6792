// A small gRPC-Web client for Herald's pages (GET /grpc-web, GET /lab): protobuf encoding of
// the few fields used, framing, base64 text mode, trailers. Generated clients (grpc-web,
// connect-web) do the same from the proto.
globalThis.HeraldGRPCWeb = (() => {
'use strict';
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function varint(value) {
  const out = [];
  let n = BigInt(value);
  do {
    let byte = Number(n & 0x7fn);
    n >>= 7n;
    if (n > 0n) byte |= 0x80;
    out.push(byte);
  } while (n > 0n);
  return out;
}

function stringField(number, text) {
  if (!text) return [];
  const bytes = encoder.encode(text);
  return [(number << 3) | 2, ...varint(bytes.length), ...bytes];
}

function uintField(number, value) {
  return value ? [(number << 3) | 0, ...varint(value)] : [];
}

// Decodes one message into {field: value}: varints as numbers, length-delimited as bytes.
function fields(bytes) {
  const out = {};
  let i = 0;
  const readVarint = () => {
    let result = 0n, shift = 0n;
    for (;;) {
      const byte = bytes[i++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
      shift += 7n;
    }
  };
  while (i < bytes.length) {
    const key = Number(readVarint());
    const number = key >> 3, type = key & 7;
    if (type === 0) out[number] = Number(readVarint());
    else if (type === 2) {
      const length = Number(readVarint());
      out[number] = bytes.subarray(i, i + length);
      i += length;
    } else if (type === 5) i += 4;
    else if (type === 1) i += 8;
    else throw new Error('unsupported wire type ' + type);
  }
  return out;
}

const text = (value) => (value ? decoder.decode(value) : '');
const STATES = ['UNSPECIFIED', 'PROCESSING', 'DONE', 'FAILED', 'CANCELED'];

function check(bytes) {
  const f = fields(bytes);
  return {id: text(f[1]), kind: text(f[2]), state: STATES[f[4] || 0], version: f[7] || 0};
}

function event(bytes) {
  const f = fields(bytes);
  return {channel: text(f[1]), offset: f[2] || 0, epoch: text(f[3]), type: text(f[4]), data: JSON.parse(text(f[6]) || 'null')};
}

// Calls `method` with one request message; calls onMessage for each response message.
// Resolves with {status, message, trailers, requests: 1, bytes}.
async function call(method, request, {mode = 'binary', onMessage = () => {}} = {}) {
  const frame = new Uint8Array(5 + request.length);
  new DataView(frame.buffer).setUint32(1, request.length);
  frame.set(request, 5);
  const isText = mode === 'text';
  const response = await fetch('/herald.v1.Herald/' + method, {
    method: 'POST',
    headers: {
      'content-type': isText ? 'application/grpc-web-text' : 'application/grpc-web+proto',
      'accept': isText ? 'application/grpc-web-text' : 'application/grpc-web+proto',
      'x-grpc-web': '1',
    },
    body: isText ? btoa(String.fromCharCode(...frame)) : frame,
  });
  if (!response.ok) throw new Error('HTTP ' + response.status);
  const reader = response.body.getReader();
  let pending = new Uint8Array(0);
  let chars = '';
  let bytes = 0;
  const result = {status: null, message: '', trailers: {}};
  const append = (chunk) => {
    const joined = new Uint8Array(pending.length + chunk.length);
    joined.set(pending);
    joined.set(chunk, pending.length);
    pending = joined;
  };
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    bytes += value.length;
    if (isText) {
      // Each frame is base64 on its own; every 4 characters decode on their own.
      chars += decoder.decode(value);
      const usable = chars.length - (chars.length % 4);
      for (let i = 0; i < usable; i += 4) {
        append(Uint8Array.from(atob(chars.slice(i, i + 4)), (c) => c.charCodeAt(0)));
      }
      chars = chars.slice(usable);
    } else {
      append(value);
    }
    while (pending.length >= 5) {
      const length = new DataView(pending.buffer, pending.byteOffset).getUint32(1);
      if (pending.length < 5 + length) break;
      const flags = pending[0];
      const payload = pending.slice(5, 5 + length);
      pending = pending.slice(5 + length);
      if (flags & 0x80) {
        for (const line of decoder.decode(payload).split('\r\n')) {
          const colon = line.indexOf(':');
          if (colon > 0) result.trailers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
        }
        result.status = Number(result.trailers['grpc-status']);
        result.message = decodeURIComponent(result.trailers['grpc-message'] || '');
      } else {
        onMessage(payload);
      }
    }
  }
  result.bytes = bytes;
  return result;
}

return {call, check, event, stringField, uintField};
})();
