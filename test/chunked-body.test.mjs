// Chunked request bodies: llhttp validates the framing without calling into JavaScript per chunk,
// and the upstream gets the exact data in the proxy's own framing (one chunk per client read,
// plus one per long client chunk in a reused read buffer; no client extensions), the trailers filtered as always. Thousands of 1-byte chunks split
// at random offsets (inside size lines, CRLFs and trailers), over TCP and TLS; chunked requests
// pipelined with others in one write; malformed framings get 400 and never reach an upstream whole.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { jsonAnswers, startProxy, startRawServer, startUpstream, waitFor, writePieces } from './helpers/servers.mjs';
import { watchOnBody } from './helpers/llhttp-body.mjs';
import { rng as seededRng } from './helpers/fuzz-core.mjs';

const GEN = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

/**
 * Counts the calls llhttp makes into the proxy's request-body callback: parsers whose `conn` is a
 * client session (it has `pendingUrl`), not the proxy's upstream parsers nor node:http's in the
 * test's own clients and upstreams.
 */
const bodyCalls = { n: 0 };
const installBodyCounter = () =>
  watchOnBody(
    (parser) => parser.conn !== undefined && 'pendingUrl' in parser.conn,
    () => bodyCalls.n++,
  );

/** The suite's seeded generator (mulberry32), as a bare function. */
const rng = (seed) => seededRng(seed).next;

/** Parses a chunked body as sent upstream: its size lines, data and trailer lines; null if incomplete. */
function parseChunked(text) {
  const sizeLines = [];
  let data = '';
  let at = 0;
  for (;;) {
    const eol = text.indexOf('\r\n', at);
    if (eol === -1) return null;
    const line = text.slice(at, eol);
    sizeLines.push(line);
    const size = parseInt(line, 16);
    at = eol + 2;
    if (size === 0) break;
    if (text.length < at + size + 2) return null;
    data += text.slice(at, at + size);
    assert.equal(text.slice(at + size, at + size + 2), '\r\n', 'CRLF after chunk data');
    at += size + 2;
  }
  const end = text.indexOf('\r\n\r\n', at - 2);
  if (end === -1) return null;
  const trailers = text.slice(at, end + 2).split('\r\n').filter((l) => l !== '');
  return { sizeLines, data, trailers, rest: text.slice(end + 4) };
}

/**
 * A raw upstream recording each request's exact bytes (one request per connection, answered with
 * `connection: close` once its chunked body is complete).
 */
async function startRecordingUpstream() {
  const requests = [];
  const raw = await startRawServer((socket) => {
    const record = { head: '', body: null, bytes: '', closed: false };
    requests.push(record);
    socket.on('close', () => (record.closed = true));
    socket.on('data', (chunk) => {
      record.bytes += chunk.toString('latin1');
      if (record.body !== null) return;
      const headEnd = record.bytes.indexOf('\r\n\r\n');
      if (headEnd === -1) return;
      const parsed = parseChunked(record.bytes.slice(headEnd + 4));
      if (parsed === null) return;
      record.head = record.bytes.slice(0, headEnd);
      record.body = parsed;
      socket.end(`HTTP/1.1 200 OK\r\ncontent-length: ${parsed.data.length.toString().length}\r\nconnection: close\r\n\r\n${parsed.data.length}`);
    });
  });
  return { ...raw, requests };
}

/**
 * `count` chunks, mostly 1 byte, some with extensions (`;a=b`, a quoted value with a space) and
 * some longer with upper-case hex and leading zeros; returns the framing, the data and the
 * offsets of a few places to split at (inside a size line, inside a data CRLF).
 */
function tinyChunks(count, random) {
  let framing = '';
  let data = '';
  const splits = [];
  for (let i = 0; i < count; i++) {
    if (i % 97 === 5) {
      const piece = 'abcdefghijklmnopqrstuvwxyz'.slice(0, 10 + (i % 16));
      splits.push(framing.length + 2); // between "00" and the rest of the size digits
      framing += `00${piece.length.toString(16).toUpperCase()}\r\n${piece}\r\n`;
      data += piece;
      continue;
    }
    const ch = String.fromCharCode(33 + Math.floor(random() * 94));
    const ext = i % 7 === 3 ? ';a=b' : i % 11 === 4 ? ';name="q v"' : '';
    if (i % 53 === 7) splits.push(framing.length + ext.length + 5); // between the CR and LF after the data
    framing += `1${ext}\r\n${ch}\r\n`;
    data += ch;
  }
  return { framing, data, splits };
}

/** Cuts `text` at the given offsets plus random ones (every 1..maxPiece bytes). */
function cut(text, forced, random, maxPiece) {
  const at = new Set(forced.filter((o) => o > 0 && o < text.length));
  for (let o = 1 + Math.floor(random() * maxPiece); o < text.length; o += 1 + Math.floor(random() * maxPiece)) at.add(o);
  const offsets = [...at].sort((a, b) => a - b);
  const pieces = [];
  let from = 0;
  for (const o of offsets) {
    pieces.push(text.slice(from, o));
    from = o;
  }
  pieces.push(text.slice(from));
  return pieces;
}

/** Everything read from `socket` until it closes; `seen.text` holds what was read so far. */
function readAll(socket, seen = { text: '' }) {
  return new Promise((resolve) => {
    socket.on('data', (c) => (seen.text += c.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => resolve(seen.text));
  });
}

describe('the chunk scan (data of bytes llhttp accepted)', () => {
  const message =
    '1\r\nA\r\n1\r\nB\r\n3;a=b;c="x y"\r\nabc\r\n00A\r\n0123456789\r\n1\r\nZ\r\n5\r\nhello\r\nf\r\n0123456789abcde\r\n' +
    '0;last\r\nX-T: 1\r\nX-U: 2\r\n\r\nGET / HTTP/1.1\r\n';
  const ends = message.indexOf('GET');

  it('finds the same data and end whatever the reads: every split in two, and one byte per read', async () => {
    const { ChunkedScan, SCAN_MORE } = await import('../dist/h1/chunked.js');
    const bytes = Buffer.from(message, 'latin1');
    const run = (cuts) => {
      const scan = new ChunkedScan();
      let data = '';
      let from = 0;
      for (const to of [...cuts, bytes.length]) {
        const buf = Buffer.from(bytes.subarray(from, to));
        const at = scan.scan(buf, buf.length);
        data += scan.take()?.toString('latin1') ?? '';
        if (at !== SCAN_MORE) return { data, end: from + at };
        from = to;
      }
      return { data, end: -1 };
    };
    const want = { data: 'ABabc0123456789Zhello0123456789abcde', end: ends };
    for (let cut = 1; cut < ends; cut++) assert.deepEqual(run([cut]), want, `split at ${cut}`);
    assert.deepEqual(run(Array.from({ length: ends }, (_, i) => i + 1)), want, 'one byte per read');
  });

  it('in place (a reused read buffer): the same data and end, as views of the read, nothing past the end rewritten', async () => {
    const { ChunkedScan, SCAN_MORE, PIECE_MIN } = await import('../dist/h1/chunked.js');
    const long = (n, c) => c.repeat(n);
    // Chunks of PIECE_MIN and more stay where they lie (pieces of their own); shorter ones are
    // moved down next to the piece before them.
    const inPlaceMessage =
      `${PIECE_MIN.toString(16)}\r\n${long(PIECE_MIN, 'p')}\r\n1\r\nB\r\n3;a=b;c="x y"\r\nabc\r\n` +
      `${(PIECE_MIN + 4096).toString(16)}\r\n${long(PIECE_MIN + 4096, 'q')}\r\n5\r\nhello\r\n1\r\nZ\r\n${(PIECE_MIN - 1).toString(16)}\r\n${long(PIECE_MIN - 1, 'r')}\r\n` +
      '0;last\r\nX-T: 1\r\n\r\n' + message.slice(ends);
    const bytes = Buffer.from(inPlaceMessage, 'latin1');
    const end = inPlaceMessage.indexOf('GET');
    const want = `${long(PIECE_MIN, 'p')}Babc${long(PIECE_MIN + 4096, 'q')}helloZ${long(PIECE_MIN - 1, 'r')}`;
    const run = (cuts) => {
      const scan = new ChunkedScan();
      let data = '';
      let from = 0;
      let pieces = 0;
      for (const to of [...cuts, bytes.length]) {
        const buf = Buffer.from(bytes.subarray(from, to));
        const at = scan.scan(buf, buf.length, true);
        for (const piece of scan.takeInPlace() ?? []) {
          assert.equal(piece.buffer, buf.buffer, 'a view of the read');
          pieces++;
          data += piece.toString('latin1');
        }
        if (at !== SCAN_MORE) {
          assert.equal(buf.subarray(at).toString('latin1'), inPlaceMessage.slice(from + at), 'the bytes past the end as read');
          return { data, end: from + at, pieces };
        }
        from = to;
      }
      return { data, end: -1, pieces };
    };
    const whole = run([]);
    assert.deepEqual({ ...whole, pieces: 0 }, { data: want, end, pieces: 0 });
    assert.equal(whole.pieces, 2, 'one read: the first long chunk with the short ones after it, the second long one with the rest');
    const cuts = new Set([1, 2, 3, 5, 6, 7, 8, 9, 10]);
    for (let c = 1; c < end; c += 37) cuts.add(c);
    for (let k = 0; k < 40; k++) for (const o of [-2, -1, 0, 1, 2]) cuts.add(Math.max(1, Math.min(end - 1, inPlaceMessage.indexOf('\r\n', (k * end) / 40) + o)));
    for (const c of cuts) assert.deepEqual({ ...run([c]), pieces: 0 }, { data: want, end, pieces: 0 }, `split at ${c}`);
    const many = [];
    for (let c = 1; c < bytes.length; c += 1 + ((c * 7919) % 5000)) many.push(c);
    assert.deepEqual({ ...run(many), pieces: 0 }, { data: want, end, pieces: 0 }, 'many reads');
  });

  it('reports framing llhttp would not have accepted instead of guessing', async () => {
    const { ChunkedScan, SCAN_BAD } = await import('../dist/h1/chunked.js');
    for (const bad of ['\r\n', 'g\r\n', '1\r\nab\r\n', '1\r\na\n', '0\r\n\n', '1\r\na\r\n1\na\r\n', '1\r\na\r\n2\r\nabc\r\n', '1\r\na\r\n1\r\nbXY']) {
      assert.equal(new ChunkedScan().scan(Buffer.from(bad, 'latin1'), bad.length), SCAN_BAD, JSON.stringify(bad));
    }
    // A chunk's extensions past 16 KiB (llhttp: HPE_CHUNK_EXTENSIONS_OVERFLOW), whole or in many
    // reads: never forwarded, they would otherwise let a client stream bytes forever as no body.
    const long = Buffer.from(`1;${'a'.repeat(16385)}\r\nx\r\n0\r\n\r\n`, 'latin1');
    assert.equal(new ChunkedScan().scan(long, long.length), SCAN_BAD, 'a 16385-byte extension');
    const drip = new ChunkedScan();
    let at = -1;
    const endless = Buffer.from(`1;${'a'.repeat(1000)}`, 'latin1');
    at = drip.scan(endless, endless.length);
    for (let n = 0; n < 100 && at === -1; n++) at = drip.scan(Buffer.from('b'.repeat(1000), 'latin1'), 1000);
    assert.equal(at, SCAN_BAD, 'an extension streamed in 1000-byte reads');
    const many = Buffer.from(`${`1;${'a'.repeat(16000)}\r\nx\r\n`.repeat(4)}0\r\n\r\n`, 'latin1');
    assert.equal(new ChunkedScan().scan(many, many.length), many.length, 'the bound is per chunk');
  });

  // The scan is the body's only parser (llhttp reads heads only): it must never accept what
  // llhttp (strict mode) refuses, and where both accept, end at the same byte with the same data.
  // Exact bytes of the framing tricks, then seeded mutations of valid bodies, each against
  // Node's own llhttp fed `head + body + next request`.
  it('never accepts framing llhttp refuses, and agrees with it on the end and data of what both accept', async () => {
    const { ChunkedScan, SCAN_MORE } = await import('../dist/h1/chunked.js');
    const { Parser, REQUEST, kLenientNone, kOnBody, kOnMessageComplete } = await import('../dist/h1/parser.js');
    const head = 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n';
    const next = 'GET /next HTTP/1.1\r\nHost: y\r\n\r\n';
    const viaLlhttp = (body) => {
      const parser = new Parser();
      parser.initialize(REQUEST, {}, 16384, kLenientNone);
      let data = '';
      let end = -1;
      parser[kOnBody] = (b) => (data += b.toString('latin1'));
      parser[kOnMessageComplete] = () => { if (end === -1) end = -2; };
      const all = Buffer.from(head + body + next, 'latin1');
      // The end of the first message: parse up to each byte until it completes.
      for (let n = head.length; n <= all.length && end === -1; n++) {
        const p2 = new Parser();
        p2.initialize(REQUEST, {}, 16384, kLenientNone);
        let done = false;
        p2[kOnMessageComplete] = () => (done = true);
        const r = p2.execute(all.subarray(0, n));
        if (r instanceof Error) break;
        if (done) end = n - head.length;
      }
      const ret = parser.execute(all);
      return { ok: !(ret instanceof Error) || end >= 0, end, data };
    };
    const viaScan = (body) => {
      const bytes = Buffer.from(body + next, 'latin1');
      const scan = new ChunkedScan(16384, 100);
      const at = scan.scan(bytes, bytes.length);
      return { ok: at >= 0, end: at, data: scan.take()?.toString('latin1') ?? '', more: at === SCAN_MORE };
    };
    const fixed = [
      '1 \r\nx\r\n0\r\n\r\n', '1\t;a\r\nx\r\n0\r\n\r\n', '1 ;a=b\r\nx\r\n0\r\n\r\n', '1;a= b\r\nx\r\n0\r\n\r\n',
      '1;a\x01\r\nx\r\n0\r\n\r\n', '1;a\x80\r\nx\r\n0\r\n\r\n', '1;a\nx\r\n0\r\n\r\n', '1\nx\r\n0\r\n\r\n', '1\r\nx\n0\r\n\r\n',
      '1\r\nx\r\n0\r\nA : b\r\n\r\n', '1\r\nx\r\n0\r\nA: b\x01\r\n\r\n', '1\r\nx\r\n0\r\nA: b\r\n c\r\n\r\n',
      '1\r\nx\r\n0\r\nA: b\n\r\n', '1\r\nx\r\n0\r\n\n', '1\r\nx\r\n0\r\nA b\r\n\r\n', '1\r\nx\r\n0\r\n:b\r\n\r\n',
      '1;\r\nx\r\n0\r\n\r\n', '1;a=b c\r\nx\r\n0\r\n\r\n', '1;a="b\r\nx\r\n0\r\n\r\n', '1;a=\x7f\r\nx\r\n0\r\n\r\n',
      '1\r\nx\r\n0\r\nA:\x7fb\r\n\r\n', '1\r\nx\r\n0\r\nA\x80:b\r\n\r\n', 'fffffffffffffffff\r\n', '1\r\nx\r\n0\r\nA:b\r\r\n\r\n',
      '1\r\nxy0\r\n\r\n', '1\r\nx\r\n0\r\nContent-Length: 3\r\n\r\n', '1\r\nx\r\n0\r\ntransfer-encoding: chunked\r\n\r\n',
      '1\r\nx\r\n0\r\n\r\r\n', '1\r\nx\r\n0\r\r\n\r\n', '1\r\r\nx\r\n0\r\n\r\n', '-1\r\nx\r\n0\r\n\r\n', '0x1\r\nx\r\n0\r\n\r\n',
      '1\r\nx\r\n0\r\n\r\n', '01\r\nx\r\n00\r\n\r\n', '1;a=b;c\r\nx\r\n0;x=1\r\nA:\tb\t\r\nB: \x80\r\n\r\n',
      '1;a="b\\"c"\r\nx\r\n0\r\n\r\n', '1;a=\r\nx\r\n0\r\n\r\n', 'A\r\n0123456789\r\n0\r\n\r\n',
      `1;${'a'.repeat(16384)}\r\nx\r\n0\r\n\r\n`, `1;${'a'.repeat(16385)}\r\nx\r\n0\r\n\r\n`, `1;a="${'b'.repeat(16382)}"\r\nx\r\n0\r\n\r\n`,
    ];
    let seed = 20261206;
    const rand = (n) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const alphabet = ['\r', '\n', ' ', '\t', ';', '=', '"', '\\', ':', '0', '1', 'a', 'f', 'g', 'x', '\x00', '\x7f', '\x80', ',', 'A'];
    const valid = ['1\r\nx\r\n0\r\n\r\n', '3;e="q"\r\nabc\r\n1\r\nz\r\n0\r\nX-T: 1\r\n\r\n', 'a\r\n0123456789\r\n0;z\r\nA: b\r\nC:d\r\n\r\n'];
    const cases = [...fixed];
    for (let i = 0; i < 3000; i++) {
      let body = valid[rand(valid.length)];
      for (let m = 1 + rand(3); m > 0; m--) {
        const at = rand(body.length + 1);
        const op = rand(3);
        const ch = alphabet[rand(alphabet.length)];
        body = op === 0 ? body.slice(0, at) + ch + body.slice(at) : op === 1 ? body.slice(0, at) + body.slice(at + 1) : body.slice(0, at) + ch + body.slice(at + 1);
      }
      cases.push(body);
    }
    let accepted = 0;
    for (const body of cases) {
      const l = viaLlhttp(body);
      const s = viaScan(body);
      if (s.ok) {
        accepted++;
        assert.ok(l.ok && l.end === s.end, `the scan accepted what llhttp does not (or ends elsewhere): ${JSON.stringify(body)} scan ${s.end} llhttp ${l.ok} ${l.end}`);
        assert.equal(s.data, l.data, JSON.stringify(body));
      }
    }
    assert.ok(accepted > 50, `only ${accepted} accepted cases: the mutations test nothing`);
  });
});

describe('chunked request bodies', () => {
  let dir;
  let rec;
  let up;
  let px;
  let tlsPx;
  let uninstallBodyCounter;

  before(async () => {
    uninstallBodyCounter = installBodyCounter();
    dir = mkdtempSync(join(tmpdir(), 'cmux-chunked-'));
    execFileSync('bash', [GEN, '--out', dir, '--name', 'main', 'localhost'], { stdio: 'ignore' });
    rec = await startRecordingUpstream();
    up = await startUpstream();
    px = await startProxy();
    tlsPx = await startProxy({ tls: { certFile: join(dir, 'main.pem'), keyFile: join(dir, 'main-key.pem') } });
  });
  after(async () => {
    uninstallBodyCounter();
    await px.proxy.stop();
    await tlsPx.proxy.stop();
    await rec.close();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Uploads 3,000 chunks split at random offsets and checks what the recording upstream got.
   * `warm`: a GET is answered on the connection first, so the chunked head arrives in a read
   * llhttp consumes from the socket itself; otherwise the head and the first body bytes are the
   * connection's first read (sniffed, then fed as stream data).
   */
  async function uploadTiny(connect, seed, warm) {
    const random = rng(seed);
    const head = `POST /tiny HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`;
    const { framing, data, splits } = tinyChunks(3000, random);
    const last = '0\r\nX-Trail: yes\r\nHost: evil.example\r\nX-Cmux-Port-Internal: 1\r\n\r\n';
    const text = head + framing + last;
    const base = head.length;
    const tail = base + framing.length;
    const forced = [
      ...splits.map((o) => base + o),
      base + 1, // inside the first size line, before its CRLF
      base + 2, // between its CR and LF
      tail + 1, // inside the last chunk's size line
      tail + 7, // inside the first trailer field's name
      text.length - 1, // between the final CR and LF
    ];
    if (!warm) forced.push(base + 200);
    const pieces = cut(text, forced, random, 300);
    // Not warm: the head and the first body bytes go in one write (joined into the first piece).
    if (!warm) pieces.splice(0, pieces.findIndex((_, i) => pieces.slice(0, i + 1).join('').length === base + 200) + 1, text.slice(0, base + 200));
    const seen = rec.requests.length;
    const callsBefore = bodyCalls.n;
    const socket = connect();
    const read = { text: '' };
    const answer = readAll(socket, read);
    if (warm) {
      socket.write(`GET /warm HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`);
      assert.ok(await waitFor(() => read.text.endsWith('}'), { timeoutMs: 10000 }), 'the warm-up GET is answered');
    }
    await writePieces(socket, pieces);
    const reply = await answer;
    assert.match(reply, warm ? /^HTTP\/1\.1 200 [^]*"url":"\/warm"[^]*\}HTTP\/1\.1 200 / : /^HTTP\/1\.1 200 /, reply.slice(0, 200));
    assert.equal(rec.requests.length, seen + 1);
    const got = rec.requests[seen];
    assert.match(got.head.toLowerCase(), /\r\ntransfer-encoding: chunked/);
    assert.equal(got.body.data, data, 'the exact body');
    for (const line of got.body.sizeLines) assert.match(line, /^[0-9a-f]+$/, 'the proxy\'s own size lines, no extensions');
    assert.ok(!got.bytes.includes('a=b') && !got.bytes.includes('q v'), 'no client extension bytes upstream');
    // One chunk per client read at most (each piece is at most one read; reads can join pieces).
    assert.ok(got.body.sizeLines.length - 1 <= pieces.length, `${got.body.sizeLines.length - 1} chunks for ${pieces.length} writes`);
    assert.deepEqual(got.body.trailers, ['X-Trail: yes'], 'trailers relayed, filtered');
    assert.equal(got.body.rest, '');
    return bodyCalls.n - callsBefore;
  }

  it('3,000 1-byte chunks (with extensions) split at random offsets: the exact body upstream, in the proxy\'s framing, without a JavaScript call per chunk', async () => {
    for (const [seed, warm] of [[1, false], [2, true], [3, false], [4, true]]) {
      const calls = await uploadTiny(() => net.connect(px.port, '127.0.0.1'), seed, warm);
      assert.equal(calls, 0, 'kOnBody calls for a chunked body');
    }
  });

  it('the same over TLS (llhttp reads the decrypted records)', async () => {
    for (const [seed, warm] of [[5, false], [6, true]]) {
      const calls = await uploadTiny(() => tls.connect({ port: tlsPx.port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }), seed, warm);
      assert.equal(calls, 0, 'kOnBody calls for a chunked body');
    }
  });

  it('chunked requests pipelined with others in one write are answered in order, each body whole (first read and a later one)', async () => {
    const h = (method, path, extra) => `${method} ${path} HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${up.port}\r\n${extra}\r\n`;
    const ones = (s) => [...s].map((c, i) => `1${i % 2 ? ';x=y' : ''}\r\n${c}\r\n`).join('');
    const burst = (last) =>
      h('POST', '/one', 'Transfer-Encoding: chunked\r\n') + ones('hello') + '0\r\n\r\n' +
      h('POST', '/two', 'Transfer-Encoding: chunked\r\n') + ones('world!') + '0\r\nX-T: 1\r\n\r\n' +
      h('POST', '/three', 'Content-Length: 3\r\n') + 'abc' +
      h('POST', '/four', 'Transfer-Encoding: chunked\r\n') + '3\r\nxyz\r\n0\r\n\r\n' +
      h('GET', '/five', last);
    const socket = net.connect(px.port, '127.0.0.1');
    const read = { text: '' };
    const raw = readAll(socket, read);
    // The first burst is the connection's first read; the second one a read llhttp consumes.
    socket.write(burst(''));
    assert.ok(await waitFor(() => read.text.includes('"url":"/five"'), { timeoutMs: 10000 }), 'the first burst is answered');
    socket.end(burst('Connection: close\r\n'));
    const got = jsonAnswers(await raw);
    const once = [
      [200, '/one', 'hello'],
      [200, '/two', 'world!'],
      [200, '/three', 'abc'],
      [200, '/four', 'xyz'],
      [200, '/five', ''],
    ];
    assert.deepEqual(got.map((a) => [a.status, a.body.url, a.body.body]), [...once, ...once]);
    assert.deepEqual(got[1].body.trailers, { 'x-t': '1' });
    assert.deepEqual(got[6].body.trailers, { 'x-t': '1' });
  });

  it('chunked requests read with bad input behind them in the same read are answered, then 400', async () => {
    const h = (path, extra) => `POST ${path} HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${up.port}\r\n${extra}\r\n`;
    const burst = h('/one', 'Transfer-Encoding: chunked\r\n') + '1\r\na\r\n1;e=f\r\nb\r\n0\r\n\r\n' + h('/two', 'Transfer-Encoding: chunked\r\n') + '2\r\ncd\r\n0\r\nX-T: 2\r\n\r\n';
    for (const bad of ['OPTIONS /three HTTP/2.0\r\nHost: app.test\r\n\r\n', '\x01junk\r\n\r\n']) {
      for (const warm of [false, true]) {
        const socket = net.connect(px.port, '127.0.0.1');
        const read = { text: '' };
        const raw = readAll(socket, read);
        if (warm) {
          socket.write(`GET /warm HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${up.port}\r\n\r\n`);
          assert.ok(await waitFor(() => read.text.endsWith('}'), { timeoutMs: 10000 }), 'the warm-up GET is answered');
        }
        socket.write(burst + bad);
        const text = await raw;
        const at = text.lastIndexOf('HTTP/1.1 400 ');
        assert.ok(at > 0, text.slice(-300));
        const got = jsonAnswers(text.slice(0, at));
        assert.deepEqual(got.map((a) => [a.status, a.body.url, a.body.body]).slice(warm ? 1 : 0), [
          [200, '/one', 'ab'],
          [200, '/two', 'cd'],
        ]);
        assert.deepEqual(got.at(-1).body.trailers, { 'x-t': '2' });
      }
    }
  });

  it('a Transfer-Encoding llhttp does not take for chunked (`chunked;q=1`, `gzip`, `x-chunked`, `chunked<TAB>`): 400, nothing upstream', async () => {
    for (const te of ['chunked;q=1', 'gzip', 'x-chunked', 'chunked\t']) {
      const seen = rec.requests.length;
      const socket = net.connect(px.port, '127.0.0.1');
      const answer = readAll(socket);
      socket.write(`POST /te HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\nTransfer-Encoding: ${te}\r\n\r\n1\r\na\r\n0\r\n\r\n`);
      const reply = await answer;
      assert.match(reply, /^HTTP\/1\.1 400 /, `${JSON.stringify(te)}: ${reply.slice(0, 100)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(rec.requests.length, seen, `${JSON.stringify(te)} reached the upstream`);
    }
  });

  it('a request refused before its body was read (no route), with a request written behind it: the 400 closes the connection and the request behind it never reaches the upstream', async () => {
    const behind = `GET /behind HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\n\r\n`;
    for (const body of ['Content-Length: 5\r\n\r\nhello', 'Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n']) {
      const seen = rec.requests.length;
      const socket = net.connect(px.port, '127.0.0.1');
      const answer = readAll(socket);
      socket.write(`POST /nowhere HTTP/1.1\r\nHost: no-route.example\r\n${body}${behind}`);
      const reply = await answer;
      assert.match(reply, /^HTTP\/1\.1 400 /, reply);
      assert.equal(reply.split('HTTP/1.1 ').length - 1, 1, reply);
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.deepEqual(rec.requests.slice(seen).map((r) => r.bytes.split('\r\n')[0]), [], JSON.stringify(body));
    }
  });

  it('a `Connection: close` trailer ends the connection\'s requests: the request written behind it never reaches the upstream', async () => {
    const seen = rec.requests.length;
    const socket = net.connect(px.port, '127.0.0.1');
    const answer = readAll(socket);
    const smuggled = `GET /smuggled HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\n\r\n`;
    socket.write(`POST /first HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nConnection: close\r\n\r\n${smuggled}`);
    const reply = await answer;
    assert.equal(reply.split('HTTP/1.1 ').length - 1, 1, reply);
    assert.match(reply, /^HTTP\/1\.1 200 /);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const heads = rec.requests.slice(seen).map((r) => r.bytes.split('\r\n')[0]);
    assert.deepEqual(heads, ['POST /first HTTP/1.1']);
  });

  it('an HTTP/1.0 chunked request is answered with `connection: close` and ends the connection, whatever its Connection asks (RFC 9112 §6.1): the request behind it never reaches the upstream', async () => {
    const seen = rec.requests.length;
    const socket = net.connect(px.port, '127.0.0.1');
    const answer = readAll(socket);
    const behind = `GET /behind HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\n\r\n`;
    socket.write(`POST /first HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\nX-Cmux-Port-Internal: ${rec.port}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n${behind}`);
    const reply = await answer;
    assert.equal(reply.split('HTTP/1.1 ').length - 1, 1, reply);
    assert.match(reply, /^HTTP\/1\.1 200 /);
    assert.match(reply, /\r\nconnection: close\r\n/i);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const heads = rec.requests.slice(seen).map((r) => r.bytes.split('\r\n')[0]);
    assert.deepEqual(heads, ['POST /first HTTP/1.1']);
  });

  for (const [name, bad] of [
    ['bare LF after a size', '1\nX\r\n0\r\n\r\n'],
    ['bare LF after data', '1\r\nX\n0\r\n\r\n'],
    ['bad hex in a size', '1g\r\nX\r\n0\r\n\r\n'],
    ['a size past 64 bits', '1ffffffffffffffff\r\nX\r\n0\r\n\r\n'],
    ['data longer than its size (no CRLF after it)', '1\r\nXY\r\n0\r\n\r\n'],
    ['junk after the last chunk', '0\r\nnot a trailer\r\n\r\n'],
    ['a space after a size', '1 \r\nX\r\n0\r\n\r\n'],
    ['a control byte in an extension', '1;a\x01\r\nX\r\n0\r\n\r\n'],
    ['an unterminated quoted extension', '1;a="b\r\nX\r\n0\r\n\r\n'],
    ['an obs-fold trailer line', '0\r\nX-T: a\r\n b\r\n\r\n'],
    ['a bare CR in a trailer', '0\r\nX-T: a\rb\r\n\r\n'],
    ['Transfer-Encoding as a trailer', '0\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['a chunk extension past 16 KiB', `1;${'a'.repeat(16385)}\r\nX\r\n0\r\n\r\n`],
  ]) {
    it(`malformed chunking (${name}): 400, the upstream never gets the request whole`, async () => {
      const head = `POST /bad HTTP/1.1\r\nHost: app.test\r\nX-Cmux-Port-Internal: ${rec.port}\r\nTransfer-Encoding: chunked\r\n\r\n`;
      const good = '1\r\na\r\n'.repeat(200);
      for (const split of [false, true]) {
        const seen = rec.requests.length;
        const socket = net.connect(px.port, '127.0.0.1');
        const answer = readAll(socket);
        if (split) {
          // Valid chunks first (they go upstream), the bad bytes in a later read.
          await new Promise((resolve) => socket.write(head + good, resolve));
          assert.ok(await waitFor(() => rec.requests.length > seen && rec.requests[seen].bytes.includes('\r\n\r\n'), { timeoutMs: 10000 }), 'the head went upstream');
          socket.write(bad);
        } else {
          socket.write(head + good + bad);
        }
        const reply = await answer;
        assert.match(reply, /^HTTP\/1\.1 400 /, reply.slice(0, 200));
        for (const r of rec.requests.slice(seen)) {
          assert.ok(await waitFor(() => r.closed, { timeoutMs: 10000 }), 'the upstream connection is closed');
          assert.equal(r.body, null, `the upstream got no complete request: ${JSON.stringify(r.bytes.slice(-40))}`);
        }
      }
    });
  }
});
