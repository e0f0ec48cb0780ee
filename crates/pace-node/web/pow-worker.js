// Proof of work for the waiting-room page, in a Web Worker so the page
// stays responsive. Finds n such that SHA-256(prefix + ":" + n) starts with
// `difficulty` zero bits (crates/pace-protocol/src/pow.rs). Plain SHA-256
// here, not crypto.subtle: that one is async per hash and missing on plain
// http pages.
'use strict';
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const W = new Uint32Array(64);
const H = new Uint32Array(8);

// SHA-256 of `bytes` (length `len`); the digest's words are left in H.
function sha256(bytes, len) {
  H.set([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const blocks = Math.ceil((len + 9) / 64);
  const buf = new Uint8Array(blocks * 64);
  buf.set(bytes.subarray(0, len));
  buf[len] = 0x80;
  const bits = len * 8;
  buf[buf.length - 4] = bits >>> 24; buf[buf.length - 3] = bits >>> 16;
  buf[buf.length - 2] = bits >>> 8; buf[buf.length - 1] = bits;
  for (let off = 0; off < buf.length; off += 64) {
    for (let i = 0; i < 16; i++) {
      const j = off + i * 4;
      W[i] = (buf[j] << 24) | (buf[j + 1] << 16) | (buf[j + 2] << 8) | buf[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const a = W[i - 15], b = W[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += h;
  }
}

function leadingZeroBits() {
  let bits = 0;
  for (let i = 0; i < 8; i++) {
    if (H[i] === 0) { bits += 32; continue; }
    return bits + Math.clz32(H[i]);
  }
  return bits;
}

function search(prefix, difficulty) {
  const head = new TextEncoder().encode(prefix + ':');
  const msg = new Uint8Array(head.length + 20);
  msg.set(head);
  for (let n = 0; n < Number.MAX_SAFE_INTEGER; n++) {
    const digits = String(n);
    for (let i = 0; i < digits.length; i++) msg[head.length + i] = digits.charCodeAt(i);
    sha256(msg, head.length + digits.length);
    if (leadingZeroBits() >= difficulty) return n;
  }
  return -1;
}

// Known answer (FIPS 180-2, "abc"), checked by the browser test.
function hex(text) {
  const b = new TextEncoder().encode(text);
  sha256(b, b.length);
  return Array.from(H, (w) => (w >>> 0).toString(16).padStart(8, '0')).join('');
}

self.onmessage = (ev) => {
  if (ev.data && ev.data.hex !== undefined) {
    self.postMessage({ hex: hex(ev.data.hex) });
    return;
  }
  const started = Date.now();
  const solution = search(ev.data.prefix, ev.data.difficulty);
  self.postMessage({ solution, ms: Date.now() - started });
};
