// Workspace -> IP: take the last `/` segment of the name; if it ends in digits N
// (u32, overflow -> 400) use N, else N = 32-bit FNV-1a of that lower-cased segment & 0xFFFF;
// IP = `127.18.((N>>8)&255).(N&255)`.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fnv1a32, workspaceIp, workspaceIpFromNumber, workspaceNumber } from '../dist/route/workspace-ip.js';

// ---- independent reference (BigInt arithmetic, regex parsing; shares no code with src) ----
function refFnv1a32(text) {
  let hash = 0x811c9dc5n;
  for (const byte of new TextEncoder().encode(text)) {
    hash ^= BigInt(byte);
    hash = (hash * 0x01000193n) & 0xffffffffn;
  }
  return Number(hash);
}
function refWorkspaceIp(name) {
  const segment = name.split('/').pop();
  const digits = /(\d+)$/.exec(segment);
  let n;
  if (digits) {
    const big = BigInt(digits[1]);
    if (big > 0xffffffffn) return null;
    n = Number(big);
  } else {
    n = refFnv1a32(segment.toLowerCase()) & 0xffff;
  }
  return `127.18.${Math.floor(n / 256) % 256}.${n % 256}`;
}

// Deterministic PRNG (mulberry32) so a failure is reproducible.
function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('workspace -> IP', () => {
  it('gives the three examples from the README', () => {
    assert.equal(workspaceIp('workspace-1'), '127.18.0.1');
    assert.equal(workspaceIp('workspace-256'), '127.18.1.0');
    assert.equal(workspaceIp('workspace-a'), '127.18.176.32');
  });

  it('reference FNV-1a agrees with the published test vectors', () => {
    // Sanity-check the reference itself (FNV-1a 32 test vectors).
    assert.equal(refFnv1a32(''), 0x811c9dc5);
    assert.equal(refFnv1a32('a'), 0xe40c292c);
    assert.equal(refFnv1a32('foobar'), 0xbf9cf968);
  });

  it('fnv1a32 matches the published test vectors', () => {
    assert.equal(fnv1a32(''), 0x811c9dc5);
    assert.equal(fnv1a32('a'), 0xe40c292c);
    assert.equal(fnv1a32('foobar'), 0xbf9cf968);
    assert.equal(fnv1a32('workspace-a') & 0xffff, 176 * 256 + 32);
  });

  it('uses trailing digits as N, whole u32, not masked to 16 bits', () => {
    assert.equal(workspaceNumber('workspace-1'), 1);
    assert.equal(workspaceNumber('workspace-007'), 7);
    assert.equal(workspaceNumber('42'), 42);
    assert.equal(workspaceNumber('ws0'), 0);
    assert.equal(workspaceIp('ws0'), '127.18.0.0');
    assert.equal(workspaceIp('workspace-255'), '127.18.0.255');
    assert.equal(workspaceIp('workspace-65535'), '127.18.255.255');
    assert.equal(workspaceIp('workspace-65536'), '127.18.0.0');
    assert.equal(workspaceIp('workspace-70000'), '127.18.17.112'); // 0x11170
    assert.equal(workspaceIp('abc123'), '127.18.0.123');
    // only the trailing run counts
    assert.equal(workspaceIp('12abc3'), '127.18.0.3');
  });

  it('accepts the largest u32 and rejects overflow with null', () => {
    assert.equal(workspaceNumber('workspace-4294967295'), 4294967295);
    assert.equal(workspaceIp('workspace-4294967295'), '127.18.255.255');
    assert.equal(workspaceNumber('workspace-4294967296'), null);
    assert.equal(workspaceIp('workspace-4294967296'), null);
    assert.equal(workspaceIp('workspace-99999999999999999999999'), null);
    // leading zeros do not overflow
    assert.equal(workspaceIp('workspace-0000000000001'), '127.18.0.1');
  });

  it('takes the last "/" segment of the name', () => {
    assert.equal(workspaceIp('org/team/workspace-5'), '127.18.0.5');
    assert.equal(workspaceIp('workspace-9/workspace-5'), '127.18.0.5');
    // digits before the last '/' are ignored: hashes "abc"
    assert.equal(workspaceIp('workspace-9/abc'), refWorkspaceIp('abc'));
    assert.equal(workspaceIp('workspace-9/abc'), workspaceIp('abc'));
    assert.equal(workspaceIp('x/workspace-a'), '127.18.176.32');
    // overflow is judged on the last segment only
    assert.equal(workspaceIp('99999999999/ws-1'), '127.18.0.1');
    assert.equal(workspaceIp('ws-1/99999999999'), null);
  });

  it('hashes the lower-cased segment (case-insensitive)', () => {
    assert.equal(workspaceIp('WORKSPACE-A'), '127.18.176.32');
    assert.equal(workspaceIp('Workspace-A'), '127.18.176.32');
    assert.equal(workspaceNumber('MyWorkspace'), workspaceNumber('myworkspace'));
    assert.equal(workspaceNumber('MyWorkspace'), refFnv1a32('myworkspace') & 0xffff);
  });

  it('hashes UTF-8 bytes of non-ASCII names', () => {
    for (const name of ['café', '日本語', 'Ünïcödé', 'emoji-😀']) {
      assert.equal(workspaceIp(name), refWorkspaceIp(name), name);
    }
  });

  it('workspaceIpFromNumber lays out N as 127.18.(N>>8&255).(N&255)', () => {
    assert.equal(workspaceIpFromNumber(0), '127.18.0.0');
    assert.equal(workspaceIpFromNumber(0x1234), '127.18.18.52');
    assert.equal(workspaceIpFromNumber(0xffffffff), '127.18.255.255');
    assert.equal(workspaceIpFromNumber(0xabcdef12), '127.18.239.18');
  });

  it('is stable across repeated (cached) calls', () => {
    for (let i = 0; i < 3; i++) {
      assert.equal(workspaceIp('workspace-a'), '127.18.176.32');
      assert.equal(workspaceIp('workspace-4294967296'), null);
    }
  });

  it('matches the independent reference for 500 random names', () => {
    const rand = mulberry32(0xc0ffee);
    const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./é';
    let withDigits = 0;
    let hashed = 0;
    for (let i = 0; i < 500; i++) {
      const len = 1 + Math.floor(rand() * 24);
      let name = '';
      for (let j = 0; j < len; j++) name += alphabet[Math.floor(rand() * alphabet.length)];
      if (rand() < 0.25) name += String(Math.floor(rand() * 2 ** 33)); // some overflow u32
      const expected = refWorkspaceIp(name);
      assert.equal(workspaceIp(name), expected, `name ${JSON.stringify(name)}`);
      if (/\d$/.test(name.split('/').pop())) withDigits++;
      else hashed++;
    }
    // the generator really covered both branches
    assert.ok(withDigits > 50 && hashed > 50, `digits=${withDigits} hashed=${hashed}`);
  });
});
