// Garbage gets 400 and the server keeps serving everyone else; request smuggling is
// refused: 400 and the connection closes. Every bad request is sent over raw TCP in one
// write, routed with `X-Cmux-Port-Internal` to a "trap" upstream of its own that must never see
// a request; afterwards a normal request through the same proxy must still be served.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rawRequest, request, startProxy, startUpstream } from './helpers/servers.mjs';

const MAX_HEADER_SIZE = 4096;
const MAX_HEADERS_COUNT = 50;
const RAW_TIMEOUT_MS = 1500;

const STATUS_LINE = {
  400: 'HTTP/1.1 400 Bad Request',
  414: 'HTTP/1.1 414 URI Too Long',
  431: 'HTTP/1.1 431 Request Header Fields Too Large',
};

/** Counts HTTP/1.x status lines in a raw response stream. */
function countStatusLines(text) {
  return (text.match(/HTTP\/1\.[01] \d{3} /g) ?? []).length;
}

describe('request smuggling and bad input over HTTP/1.1', () => {
  let proxy;
  let pport;
  let base;
  let good; // the upstream for the follow-up normal requests
  const traps = [];

  before(async () => {
    ({ proxy, port: pport, url: base } = await startProxy({ maxHeaderSize: MAX_HEADER_SIZE, maxHeadersCount: MAX_HEADERS_COUNT }));
    good = await startUpstream();
  });

  after(async () => {
    await proxy?.stop();
    await good?.close();
    for (const t of traps) await t.close();
  });

  /**
   * Sends `build(trapPort)` in one write; asserts the exact status line, a single response, a
   * close by the proxy, nothing at the trap upstream, and that the proxy still serves.
   */
  async function refuse(build, status = 400) {
    const trap = await startUpstream();
    traps.push(trap);
    let trapConnections = 0;
    trap.server.on('connection', () => trapConnections++);
    const data = build(trap.port);
    const t0 = Date.now();
    const text = await rawRequest(pport, data, { timeoutMs: RAW_TIMEOUT_MS });
    const elapsed = Date.now() - t0;
    const firstLine = text.slice(0, text.indexOf('\r\n') === -1 ? undefined : text.indexOf('\r\n'));
    assert.equal(firstLine, STATUS_LINE[status], `answer: ${JSON.stringify(text.slice(0, 300))}`);
    assert.equal(countStatusLines(text), 1, `expected exactly one response, got ${JSON.stringify(text)}`);
    const headEnd = text.indexOf('\r\n\r\n');
    const head = text.slice(0, headEnd).toLowerCase();
    assert.match(head, /\r\nconnection: close(\r\n|$)/, 'the refusal says connection: close');
    const cl = /\r\ncontent-length: (\d+)/.exec(head);
    assert.ok(cl, 'the refusal has a content-length');
    assert.equal(text.length - (headEnd + 4), Number(cl[1]), 'nothing after the refusal body');
    assert.ok(elapsed < RAW_TIMEOUT_MS - 100, `the proxy did not close the connection (${elapsed} ms)`);
    // Give a wrongly forwarded request time to land before checking the trap.
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(
      trap.requests.map((r) => `${r.method} ${r.url}`),
      [],
      'a refused request reached the upstream',
    );
    const res = await request(`${base}/after`, { headers: { 'X-Cmux-Port-Internal': String(good.port) } });
    assert.equal(res.status, 200, 'the proxy still serves a normal request');
    assert.equal(JSON.parse(res.body).url, '/after');
    return { text, trapConnections };
  }

  const head = (p, extra = '', line = 'POST /x HTTP/1.1') => `${line}\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n${extra}`;

  it('Content-Length and Transfer-Encoding together -> 400', async () => {
    await refuse((p) => `${head(p, 'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n')}0\r\n\r\n`);
  });

  it('Transfer-Encoding then Content-Length -> 400', async () => {
    await refuse((p) => `${head(p, 'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n')}0\r\n\r\n`);
  });

  it('CL.TE: the request smuggled after a CL+TE request never reaches the upstream', async () => {
    // A CL-reading hop would see 4 body bytes and then "GET /smuggled"; a TE-reading hop ends at 0.
    await refuse(
      (p) =>
        `${head(p, 'Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n')}0\r\n\r\n` +
        `GET /smuggled HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`,
    );
  });

  it('TE.CL: a smuggled request hidden in the body never reaches the upstream', async () => {
    await refuse((p) => {
      const smuggled = `GET /smuggled HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`;
      const body = `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`;
      return `${head(p, `Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n`)}${body}`;
    });
  });

  it('two different Content-Length headers -> 400', async () => {
    await refuse((p) => `${head(p, 'Content-Length: 5\r\nContent-Length: 6\r\n\r\n')}hello!`);
  });

  it('a Content-Length list with different values -> 400', async () => {
    await refuse((p) => `${head(p, 'Content-Length: 5, 6\r\n\r\n')}hello!`);
  });

  it('duplicate (identical) Content-Length headers -> 400', async () => {
    await refuse((p) => `${head(p, 'Content-Length: 5\r\nContent-Length: 5\r\n\r\n')}hello`);
  });

  it("invalid Content-Length 'abc' -> 400", async () => {
    await refuse((p) => `${head(p, 'Content-Length: abc\r\n\r\n')}hello`);
  });

  it("invalid Content-Length '-1' -> 400", async () => {
    await refuse((p) => `${head(p, 'Content-Length: -1\r\n\r\n')}hello`);
  });

  it("bad chunk size 'zz' -> 400", async () => {
    await refuse((p) => `${head(p, 'Transfer-Encoding: chunked\r\n\r\n')}zz\r\nhello\r\n0\r\n\r\n`);
  });

  it('obs-fold header continuation -> 400', async () => {
    await refuse((p) => `${head(p, 'X-Folded: first\r\n  second\r\nContent-Length: 0\r\n\r\n', 'GET /x HTTP/1.1')}`);
  });

  it('two Host headers -> 400', async () => {
    await refuse((p) => `GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`);
  });

  it('HTTP/1.1 without Host -> 400', async () => {
    await refuse((p) => `GET /x HTTP/1.1\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`);
  });

  it('`GET / HTTP/2.0` request line (not the h2 preface) -> 400', async () => {
    await refuse((p) => `GET / HTTP/2.0\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`);
  });

  it('HTTP/0.9 `GET /` -> 400', async () => {
    await refuse(() => 'GET /\r\n');
  });

  it('garbage bytes -> 400', async () => {
    await refuse(() => '\x00\x01\x02 hello');
  });

  it(`request line longer than maxHeaderSize (${MAX_HEADER_SIZE}) -> 414`, async () => {
    await refuse((p) => `GET /${'a'.repeat(MAX_HEADER_SIZE + 1000)} HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`, 414);
  });

  it(`headers larger than maxHeaderSize (${MAX_HEADER_SIZE}) -> 431`, async () => {
    await refuse((p) => `GET /x HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\nX-Big: ${'b'.repeat(MAX_HEADER_SIZE + 1000)}\r\n\r\n`, 431);
  });

  it(`more than maxHeadersCount (${MAX_HEADERS_COUNT}) header fields -> 431`, async () => {
    await refuse((p) => {
      let extra = '';
      for (let i = 0; i < MAX_HEADERS_COUNT + 10; i++) extra += `X-H-${i}: v\r\n`;
      return `GET /x HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n${extra}\r\n`;
    }, 431);
  });

  it(`exactly maxHeadersCount (${MAX_HEADERS_COUNT}) header fields is accepted`, async () => {
    // The boundary: Host + X-Cmux-Port-Internal + 48 others = 50 fields.
    let extra = '';
    for (let i = 0; i < MAX_HEADERS_COUNT - 2; i++) extra += `X-H-${i}: v\r\n`;
    const text = await rawRequest(pport, `GET /fifty HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${good.port}\r\n${extra}\r\n`, {
      timeoutMs: RAW_TIMEOUT_MS,
      until: (t) => t.includes('"url":"/fifty"') && t.endsWith('}'),
    });
    assert.equal(text.slice(0, text.indexOf('\r\n')), 'HTTP/1.1 200 OK');
    const seen = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    assert.equal(seen.url, '/fifty');
    assert.equal(seen.headers['x-h-47'], 'v');
  });

  it('a valid request on the same connection before a smuggling attempt is answered; the bad one is not forwarded', async () => {
    const trap = await startUpstream();
    traps.push(trap);
    const p = trap.port;
    const text = await rawRequest(
      pport,
      `GET /ok HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n` +
        `POST /bad HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n` +
        `GET /smuggled HTTP/1.1\r\nHost: app.example\r\nX-Cmux-Port-Internal: ${p}\r\n\r\n`,
      { timeoutMs: RAW_TIMEOUT_MS },
    );
    const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
    assert.deepEqual(statuses, [200, 400], JSON.stringify(text));
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(
      trap.requests.map((r) => `${r.method} ${r.url}`),
      ['GET /ok'],
    );
  });
});
