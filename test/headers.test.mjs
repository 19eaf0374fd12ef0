// The forwarding rules (header part) and HTTP/1 <-> HTTP/2 header translation, on the pure helpers.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  buildUpstreamRequestHead,
  filterResponseHeadersH1,
  responseHeadersH2,
  scanRequestHeaders,
  connectionTokens,
  emptyFacts,
  isHopByHop,
} from '../dist/headers.js';

const CTX = {
  host: 'web.3000.localhost:9776',
  forwardedHost: 'web.3000.localhost:9776',
  clientAddress: '10.0.0.7',
  proto: 'http',
  viaEntry: '1.1 cmux-proxy-abcd1234',
  upgrade: false,
  chunked: false,
};

/** Builds a head and parses it back into [request line, [[name, value], ...]]. */
function build(raw, ctx = {}, method = 'GET', path = '/x?y=1') {
  const head = buildUpstreamRequestHead(method, path, raw, connectionTokens(raw), { ...CTX, ...ctx });
  assert.ok(head.endsWith('\r\n\r\n'), 'head ends with an empty line');
  const lines = head.slice(0, -4).split('\r\n');
  const requestLine = lines.shift();
  const fields = lines.map((line) => {
    const colon = line.indexOf(':');
    assert.ok(colon > 0, `malformed line ${JSON.stringify(line)}`);
    assert.equal(line[colon + 1], ' ');
    return [line.slice(0, colon), line.slice(colon + 2)];
  });
  return { head, requestLine, fields };
}
const names = (fields) => fields.map(([n]) => n.toLowerCase());
const values = (fields, name) => fields.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);

const HOP = [
  'Connection', 'close, X-Secret-Hop, x-other-hop',
  'Keep-Alive', 'timeout=5',
  'Proxy-Connection', 'keep-alive',
  'Proxy-Authenticate', 'Basic',
  'Proxy-Authorization', 'Basic Zm9vOmJhcg==',
  'TE', 'trailers',
  'Trailer', 'X-Checksum',
  'Transfer-Encoding', 'chunked',
  'Upgrade', 'h2c',
  'X-Cmux-Port-Internal', '3000',
  'X-Cmux-Workspace-Internal', 'workspace-1',
  'X-Cmux-Host-Override', 'other.example',
  'X-Secret-Hop', 'named by connection',
  'X-Other-Hop', 'also named',
];
const HOP_NAMES = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'x-cmux-port-internal', 'x-cmux-workspace-internal', 'x-cmux-host-override', 'x-secret-hop', 'x-other-hop'];

describe('buildUpstreamRequestHead', () => {
  it('writes the request line and host first', () => {
    const { requestLine, fields } = build(['Host', 'client.example', 'Accept', '*/*'], {}, 'POST', '/api?q=1');
    assert.equal(requestLine, 'POST /api?q=1 HTTP/1.1');
    assert.deepEqual(fields[0], ['host', 'web.3000.localhost:9776']);
    assert.equal(values(fields, 'host').length, 1, 'the client Host is replaced, not duplicated');
  });

  it('removes hop-by-hop and routing headers, and headers named by Connection', () => {
    const { fields } = build(['Host', 'h', ...HOP, 'Accept', 'text/html']);
    for (const name of HOP_NAMES) assert.ok(!names(fields).includes(name), `${name} was forwarded`);
    assert.deepEqual(values(fields, 'accept'), ['text/html']);
  });

  it('keeps other x-cmux-* headers unchanged (X-Cmux-Proxied)', () => {
    const { fields } = build(['Host', 'h', 'X-Cmux-Proxied', 'edge-1', 'x-cmux-trace', 'abc']);
    assert.deepEqual(fields.filter(([n]) => n.toLowerCase().startsWith('x-cmux-')), [['X-Cmux-Proxied', 'edge-1'], ['x-cmux-trace', 'abc']]);
  });

  it('keeps end-to-end headers in order with their case and values', () => {
    const { fields } = build(['Host', 'h', 'Accept', 'a', 'X-Custom', 'v1', 'x-custom', 'v2', 'Content-Length', '5']);
    assert.deepEqual(fields.slice(1, 5), [['Accept', 'a'], ['X-Custom', 'v1'], ['x-custom', 'v2'], ['Content-Length', '5']]);
  });

  it('sets X-Forwarded-For to the client address when absent', () => {
    const { fields } = build(['Host', 'h']);
    assert.deepEqual(values(fields, 'x-forwarded-for'), ['10.0.0.7']);
  });

  it('appends the client address to X-Forwarded-For (several fields joined)', () => {
    const { fields } = build(['Host', 'h', 'X-Forwarded-For', '1.1.1.1', 'x-forwarded-for', '2.2.2.2, 3.3.3.3']);
    assert.deepEqual(values(fields, 'x-forwarded-for'), ['1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7']);
  });

  it('sets X-Forwarded-Proto and X-Forwarded-Host', () => {
    const { fields } = build(['Host', 'h']);
    assert.deepEqual(values(fields, 'x-forwarded-proto'), ['http']);
    assert.deepEqual(values(fields, 'x-forwarded-host'), ['web.3000.localhost:9776']);
    const tls = build(['Host', 'h'], { proto: 'https' });
    assert.deepEqual(values(tls.fields, 'x-forwarded-proto'), ['https']);
  });

  it('replaces a client-sent X-Forwarded-Proto / X-Forwarded-Host with what the proxy saw', () => {
    const { fields } = build(['Host', 'h', 'X-Forwarded-Proto', 'https', 'X-Forwarded-Host', 'evil.example']);
    assert.deepEqual(values(fields, 'x-forwarded-proto'), ['http']);
    assert.deepEqual(values(fields, 'x-forwarded-host'), ['web.3000.localhost:9776']);
  });

  it('keeps Upgrade on upgrades only', () => {
    const raw = ['Host', 'h', 'Upgrade', 'websocket', 'Connection', 'Upgrade'];
    assert.deepEqual(values(build(raw, { upgrade: true }).fields, 'upgrade'), ['websocket']);
    assert.deepEqual(values(build(raw, { upgrade: true }).fields, 'connection'), ['upgrade']);
    assert.deepEqual(values(build(raw).fields, 'upgrade'), []);
  });

  it('appends its Via entry', () => {
    assert.deepEqual(values(build(['Host', 'h']).fields, 'via'), ['1.1 cmux-proxy-abcd1234']);
    const { fields } = build(['Host', 'h', 'Via', '1.1 edge', 'via', '2 other']);
    assert.deepEqual(values(fields, 'via'), ['1.1 edge, 2 other, 1.1 cmux-proxy-abcd1234']);
  });

  it('joins cookies with "; " into one field', () => {
    const { fields } = build([':method', 'GET', ':path', '/', 'cookie', 'a=1', 'cookie', 'b=2', 'Cookie', 'c=3; d=4']);
    assert.deepEqual(values(fields, 'cookie'), ['a=1; b=2; c=3; d=4']);
  });

  it('skips HTTP/2 pseudo-headers', () => {
    const { fields } = build([':method', 'GET', ':scheme', 'https', ':authority', 'a.3000.localhost', ':path', '/x', 'accept', '*/*']);
    assert.ok(!fields.some(([n]) => n.startsWith(':')));
    assert.deepEqual(values(fields, 'accept'), ['*/*']);
  });

  it('adds transfer-encoding: chunked only when asked', () => {
    assert.deepEqual(values(build(['Host', 'h', 'Transfer-Encoding', 'gzip, chunked']).fields, 'transfer-encoding'), []);
    assert.deepEqual(values(build(['Host', 'h'], { chunked: true }).fields, 'transfer-encoding'), ['chunked']);
  });

  it('on upgrades sends Connection: upgrade', () => {
    const raw = ['Host', 'h', 'Upgrade', 'websocket', 'Connection', 'Upgrade', 'Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version', '13'];
    const { fields } = build(raw, { upgrade: true });
    assert.deepEqual(values(fields, 'connection').map((v) => v.toLowerCase()), ['upgrade']);
    assert.deepEqual(values(fields, 'sec-websocket-key'), ['dGhlIHNhbXBsZSBub25jZQ==']);
    assert.deepEqual(values(fields, 'sec-websocket-version'), ['13']);
  });

  it('on upgrades keeps the Upgrade header (hop-by-hop everywhere else)', () => {
    const raw = ['Host', 'h', 'Upgrade', 'websocket', 'Connection', 'Upgrade', 'Sec-WebSocket-Key', 'k', 'Sec-WebSocket-Version', '13'];
    const { fields } = build(raw, { upgrade: true });
    assert.deepEqual(values(fields, 'upgrade').map((v) => v.toLowerCase()), ['websocket']);
  });

  it('drops Upgrade when not an upgrade', () => {
    const { fields } = build(['Host', 'h', 'Upgrade', 'websocket', 'Connection', 'Upgrade']);
    assert.deepEqual(values(fields, 'upgrade'), []);
    assert.deepEqual(values(fields, 'connection'), []);
  });
});

describe('filterResponseHeadersH1', () => {
  const parse = (lines) => lines.split('\r\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]);

  it('removes hop-by-hop headers and those named by Connection, keeps the rest', () => {
    const facts = {};
    const lines = filterResponseHeadersH1(['Content-Type', 'text/plain', ...HOP, 'X-Cmux-Proxied', '1', 'Content-Length', '12'], false, facts);
    const fields = parse(lines);
    for (const name of HOP_NAMES) assert.ok(!names(fields).includes(name), `${name} was forwarded`);
    assert.deepEqual(fields, [['Content-Type', 'text/plain'], ['X-Cmux-Proxied', '1'], ['Content-Length', '12']]);
    assert.equal(facts.contentLength, true);
    assert.equal(facts.keepAliveTimeoutSec, 5);
  });

  it('keeps Set-Cookie lines separate', () => {
    const lines = filterResponseHeadersH1(['Set-Cookie', 'a=1; Path=/', 'Set-Cookie', 'b=2'], false, {});
    assert.equal(lines, 'Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2\r\n');
  });

  it('keeps Upgrade and Connection on 101 answers', () => {
    const facts = {};
    const lines = filterResponseHeadersH1(['Upgrade', 'websocket', 'Connection', 'Upgrade', 'Sec-WebSocket-Accept', 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=', 'Keep-Alive', 'timeout=1'], true, facts);
    assert.equal(lines, 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n');
    assert.equal(facts.contentLength, false);
  });

  it('resets facts on every call', () => {
    const facts = { contentLength: true, keepAliveTimeoutSec: 9 };
    filterResponseHeadersH1(['Content-Type', 'x'], false, facts);
    assert.deepEqual(facts, { contentLength: false, keepAliveTimeoutSec: 0 });
  });
});

describe('Keep-Alive timeout parsing', () => {
  const cases = [
    ['timeout=5', 5],
    ['timeout=5, max=100', 5],
    ['max=100, timeout=7', 7],
    ['Timeout=15', 15],
    ['TIMEOUT=3,MAX=1', 3],
    ['max=100', 0],
    ['timeout=0', 0],
    ['timeout=-4', 0],
    ['timeout=abc', 0],
    ['', 0],
  ];
  for (const [value, expected] of cases) {
    it(`${JSON.stringify(value)} -> ${expected}`, () => {
      const h1 = {};
      filterResponseHeadersH1(['Keep-Alive', value], false, h1);
      assert.equal(h1.keepAliveTimeoutSec, expected);
      const h2 = {};
      responseHeadersH2(['keep-alive', value], 200, h2);
      assert.equal(h2.keepAliveTimeoutSec, expected);
    });
  }
});

describe('responseHeadersH2', () => {
  it('lower-cases names, adds :status, drops connection-specific headers', () => {
    const facts = {};
    const out = responseHeadersH2(['Content-Type', 'text/html', ...HOP, 'X-Cmux-Proxied', 'yes', 'Content-Length', '42'], 200, facts);
    assert.deepEqual(out, { ':status': 200, 'content-type': 'text/html', 'x-cmux-proxied': 'yes', 'content-length': '42' });
    assert.equal(facts.contentLength, true);
    assert.equal(facts.keepAliveTimeoutSec, 5);
  });

  it('keeps set-cookie as an array, even for a single cookie', () => {
    assert.deepEqual(responseHeadersH2(['Set-Cookie', 'a=1'], 200, {})['set-cookie'], ['a=1']);
    const out = responseHeadersH2(['Set-Cookie', 'a=1; Path=/', 'set-cookie', 'b=2, c=3', 'SET-COOKIE', 'd=4'], 204, {});
    assert.deepEqual(out, { ':status': 204, 'set-cookie': ['a=1; Path=/', 'b=2, c=3', 'd=4'] });
  });

  it('joins other duplicate headers with ", "', () => {
    const out = responseHeadersH2(['Vary', 'Accept', 'vary', 'Origin', 'VARY', 'Cookie', 'Cache-Control', 'no-cache'], 200, {});
    assert.deepEqual(out, { ':status': 200, vary: 'Accept, Origin, Cookie', 'cache-control': 'no-cache' });
  });

  it('never emits upgrade/connection (no 101 on HTTP/2)', () => {
    const out = responseHeadersH2(['Upgrade', 'websocket', 'Connection', 'Upgrade', 'Sec-WebSocket-Accept', 'x'], 200, {});
    assert.deepEqual(out, { ':status': 200, 'sec-websocket-accept': 'x' });
  });
});

describe('scanRequestHeaders', () => {
  const VIA = 'cmux-proxy-abcd1234';

  it('gathers routing and framing facts in one pass, names in any case', () => {
    const facts = emptyFacts();
    scanRequestHeaders(
      [
        'HOST', 'a.3000.localhost',
        'x-cmux-port-internal', ' 3000 ',
        'X-CMUX-WORKSPACE-INTERNAL', 'workspace-1',
        'X-Cmux-Host-Override', 'other.example',
        'X-CMUX-Upstream-Scheme', 'HTTPS',
        'Content-Length', '10',
        'Connection', 'keep-alive, Upgrade',
        'Upgrade', 'websocket',
        'Via', `1.1 edge, 1.1 ${VIA}`,
        'via', `1.1 ${VIA}, 1.1 ${VIA}`,
        'X-Cmux-Proxied', '1',
      ],
      VIA,
      facts,
    );
    assert.deepEqual(facts, {
      host: 'a.3000.localhost',
      hostCount: 1,
      portHeader: ' 3000 ',
      workspaceHeader: 'workspace-1',
      hostOverride: 'other.example',
      schemeHeader: 'HTTPS',
      contentLength: '10',
      chunked: false,
      viaSelfCount: 3,
      connectionTokens: null, // keep-alive and upgrade are removed as hop-by-hop anyway
      upgradeWebsocket: true,
      repeatedRouting: 0,
      requestId: undefined,
    });
  });

  it('counts Host headers and notes Transfer-Encoding', () => {
    const facts = emptyFacts();
    scanRequestHeaders(['Host', 'a', 'host', 'b', 'Transfer-Encoding', 'chunked'], VIA, facts);
    assert.equal(facts.hostCount, 2);
    assert.equal(facts.chunked, true);
    assert.equal(facts.portHeader, undefined);
    assert.equal(facts.workspaceHeader, undefined);
  });

  it('an empty routing header is recorded as "" (not undefined)', () => {
    const facts = emptyFacts();
    scanRequestHeaders(['X-Cmux-Port-Internal', '', 'X-Cmux-Workspace-Internal', ''], VIA, facts);
    assert.equal(facts.portHeader, '');
    assert.equal(facts.workspaceHeader, '');
  });

  it('ignores headers that only look similar', () => {
    const facts = emptyFacts();
    scanRequestHeaders(['Hostx', 'a', 'X-Cmux-Port-Internals', '1', 'Content-Lengths', '3', 'Vias', VIA], VIA, facts);
    assert.deepEqual(facts, emptyFacts());
  });
});

describe('isHopByHop / connectionTokens', () => {
  it('knows exactly the hop-by-hop list: RFC 9110 fields, proxy-connection, the X-Cmux routing headers, http2-settings', () => {
    for (const name of ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'x-cmux-port-internal', 'x-cmux-workspace-internal', 'x-cmux-host-override', 'http2-settings']) {
      assert.equal(isHopByHop(name), true, name);
    }
    for (const name of ['x-cmux-proxied', 'content-length', 'host', 'cookie', 'via', 'x-forwarded-for', 'trailers']) {
      assert.equal(isHopByHop(name), false, name);
    }
  });

  it('splits, trims and lower-cases every Connection header', () => {
    assert.deepEqual(connectionTokens(['Connection', ' Keep-Alive ,X-Foo,, ', 'connection', 'close, X-Bar']), ['x-foo', 'x-bar']);
    // The usual values name nothing beyond the hop-by-hop list: no per-header check needed.
    assert.equal(connectionTokens(['Connection', 'keep-alive', 'Connection', 'Upgrade', 'Connection', 'close']), null);
    assert.equal(connectionTokens(['Accept', '*/*']), null);
  });
});

describe('header names in any spelling, after many distinct names', () => {
  it('hop-by-hop and routing headers are still recognised once the spelling cache is full', () => {
    // 5,000 distinct names (more than the per-spelling cache holds) pass through first.
    const many = [];
    for (let i = 0; i < 5000; i++) many.push(`X-Random-${i}`, 'v');
    const facts = {};
    assert.equal(filterResponseHeadersH1(many, false, facts).split('\r\n').length - 1, 5000);
    const odd = ['CoNnEcTiOn', 'x-ToKeN', 'KEEP-ALIVE', 'timeout=9', 'TrAnSfEr-EnCoDiNg', 'chunked', 'X-TOKEN', '1', 'content-LENGTH', '3', 'X-Kept', 'yes'];
    const lines = filterResponseHeadersH1(odd, false, facts);
    assert.equal(lines, 'content-LENGTH: 3\r\nX-Kept: yes\r\n');
    assert.equal(facts.keepAliveTimeoutSec, 9);
    assert.equal(facts.contentLength, true);
    const req = emptyFacts();
    scanRequestHeaders(['hOsT', 'a.localhost', 'X-CMUX-PORT-INTERNAL', '3000', 'x-cmux-workspace-INTERNAL', 'ws1', 'X-Cmux-Host-Override', 'b'], 'tok', req);
    assert.equal(req.host, 'a.localhost');
    assert.equal(req.portHeader, '3000');
    assert.equal(req.workspaceHeader, 'ws1');
    assert.equal(req.hostOverride, 'b');
    const head = buildUpstreamRequestHead('GET', '/', ['X-CMUX-PORT-INTERNAL', '3000', 'X-FORWARDED-PROTO', 'https', 'CoOkIe', 'a=1', 'Accept', '*/*'], null, CTX);
    assert.doesNotMatch(head, /X-CMUX-PORT-INTERNAL|X-FORWARDED-PROTO: https/);
    assert.match(head, /\r\ncookie: a=1\r\n/);
    assert.match(head, /\r\nAccept: \*\/\*\r\n/);
  });
});
