// Micro benchmarks for the hot functions (tinybench). Each checks its output before timing it.
//   npm run bench:micro            all
//   npm run bench:micro -- route   only names containing "route"
import assert from 'node:assert/strict';
import { Bench } from 'tinybench';
import { sniff, SNIFF_H1, SNIFF_H2, SNIFF_MORE } from '../../dist/sniff.js';
import { route } from '../../dist/route/router.js';
import { workspaceIp, workspaceNumber } from '../../dist/route/workspace-ip.js';
import dc from 'node:diagnostics_channel';
import * as diag from '../../dist/diagnostics.js';
import { WsFrames } from '../../dist/ws-frames.js';
import { buildUpstreamRequestHead, connectionTokens, emptyFacts, filterResponseHeadersH1, responseHeadersH2, scanRequestHeaders } from '../../dist/headers.js';

const filter = process.argv[2];
const config = { headerRoutingEnabled: true, workspaceIsolation: true };
const h1Request = Buffer.from('GET /index.html HTTP/1.1\r\nHost: app.3000.localhost\r\n\r\n');
const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const browserHeaders = [
  'Host', 'app.3000.localhost:9776',
  'User-Agent', 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36',
  'Accept', 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
  'Accept-Language', 'en-US,en;q=0.9',
  'Accept-Encoding', 'gzip, deflate, br',
  'Connection', 'keep-alive',
  'Cookie', 'session=abc123; theme=dark',
  'X-Cmux-Port-Internal', '3000',
  'Sec-Fetch-Mode', 'navigate',
];
const responseHeaders = ['Content-Type', 'text/html; charset=utf-8', 'Content-Length', '1234', 'Connection', 'keep-alive', 'Keep-Alive', 'timeout=5', 'Date', 'Thu, 26 Nov 2026 00:00:00 GMT', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2'];
const ctx = { host: 'app.3000.localhost:9776', forwardedHost: 'app.3000.localhost:9776', clientAddress: '127.0.0.1', proto: 'http', viaEntry: '1.1 cmux-proxy-abcd1234', upgrade: false, chunked: false };

const cases = {
  'sniff h1': [() => sniff(h1Request), SNIFF_H1],
  'sniff h2 preface': [() => sniff(preface), SNIFF_H2],
  'sniff split preface': [() => sniff(preface.subarray(0, 10)), SNIFF_MORE],
  'route by header': [() => route(config, { portHeader: '3000', workspaceHeader: undefined, host: 'x' }, false).key, '127.0.0.1:3000'],
  'route by header + workspace': [() => route(config, { portHeader: '3000', workspaceHeader: 'workspace-1', host: 'x' }, false).key, '127.18.0.1:3000'],
  'route <container>.<port>.localhost': [() => route(config, { portHeader: undefined, workspaceHeader: undefined, host: 'app.3000.localhost:9776' }, false).key, '127.0.0.1:3000'],
  'route cmux-<id>-<scope>-<port>.cmux.sh': [() => route(config, { portHeader: undefined, workspaceHeader: undefined, host: 'cmux-abc-workspace-a-5173.cmux.sh' }, false).key, '127.18.176.32:5173'],
  'workspaceIp (cached)': [() => workspaceIp('workspace-a'), '127.18.176.32'],
  'workspaceNumber (uncached FNV-1a)': [() => workspaceNumber('team/my-workspace'), workspaceNumber('team/my-workspace')],
  'scanRequestHeaders (browser head)': [() => {
    const facts = emptyFacts();
    scanRequestHeaders(browserHeaders, 'cmux-proxy-abcd1234', facts);
    return facts.portHeader;
  }, '3000'],
  'buildUpstreamRequestHead (browser head)': [() => buildUpstreamRequestHead('GET', '/index.html', browserHeaders, connectionTokens(browserHeaders), ctx).length, buildUpstreamRequestHead('GET', '/index.html', browserHeaders, connectionTokens(browserHeaders), ctx).length],
  'filterResponseHeadersH1': [() => filterResponseHeadersH1(responseHeaders, false, { contentLength: false, keepAliveTimeoutSec: 0 }).includes('Keep-Alive'), false],
  'responseHeadersH2': [() => responseHeadersH2(responseHeaders, 200, { contentLength: false, keepAliveTimeoutSec: 0 })['set-cookie'].length, 2],
};

// WebSocket frame boundaries in a tunnel (src/ws-frames.ts): one 64 KiB read of server frames,
// 256-byte payloads (~250 frames, each header read a byte at a time) or inside one 4 MiB frame.
function serverFrames(payload, count) {
  const head = payload < 126 ? 2 : payload < 65536 ? 4 : 10;
  const frame = Buffer.alloc(head + payload);
  frame[0] = 0x82;
  if (head === 2) frame[1] = payload;
  else if (head === 4) (frame[1] = 126), frame.writeUInt16BE(payload, 2);
  else (frame[1] = 127), frame.writeBigUInt64BE(BigInt(payload), 2);
  return Buffer.concat(Array.from({ length: count }, () => frame));
}
const smallFrames = serverFrames(256, 1024);
const smallReads = [];
for (let at = 0; at < smallFrames.length; at += 65536) smallReads.push(smallFrames.subarray(at, Math.min(smallFrames.length, at + 65536)));
const bigFrame = serverFrames(4 * 1024 * 1024, 1);
const bigHead = bigFrame.subarray(0, 10);
const bigRead = bigFrame.subarray(10, 10 + 65536);
const smallTracker = new WsFrames(false);
let smallNext = 0;
const bigTracker = new WsFrames(false);
bigTracker.scan(bigHead, 0, false);
cases['WsFrames.scan 64 KiB of 256-byte frames'] = [() => {
  const read = smallReads[smallNext];
  smallNext = (smallNext + 1) % smallReads.length;
  smallTracker.scan(read, 0, false);
  return smallTracker.invalid;
}, false];
cases['WsFrames.scan 64 KiB inside a 4 MiB frame'] = [() => {
  bigTracker.scan(bigRead, 0, false);
  if (bigTracker.atBoundary) bigTracker.scan(bigHead, 0, false);
  return bigTracker.invalid;
}, false];

// The diagnostics_channel publish sites one exchange passes (start, route, upstream:connect,
// response:headers, end), written as in src/: with nobody subscribed each is one
// `hasSubscribers` read and no object is built. Compared with the same call doing nothing.
const exchange = {
  diag: null,
  diagRequest() {
    return (this.diag ??= diag.diagnosticsRequest('id-1', 'GET', 'app.3000.localhost', '/', '1.1', false, '127.0.0.1'));
  },
};
const rawResponse = ['content-type', 'text/plain'];
function exchangeSites(ex) {
  ex.diag = null;
  if (diag.requestStart.hasSubscribers) diag.requestStart.publish({ request: ex.diagRequest() });
  if (diag.requestRoute.hasSubscribers) diag.requestRoute.publish({ request: ex.diagRequest(), target: '127.0.0.1:3000', route: 'header' });
  if (diag.upstreamConnect.hasSubscribers) diag.upstreamConnect.publish({ request: ex.diagRequest(), target: '127.0.0.1:3000', protocol: 'http1', reused: true });
  if (diag.responseHeaders.hasSubscribers) diag.responseHeaders.publish({ request: ex.diagRequest(), status: 200, headers: rawResponse });
  if (diag.requestEnd.hasSubscribers || diag.requestError.hasSubscribers) diag.publishEnd(ex.diagRequest(), 200, '', 0, 100);
  return ex.diag;
}
function noSites(ex) {
  ex.diag = null;
  return ex.diag;
}
let seen = 0;
const subscriber = () => seen++;
const subscribeAll = () => diag.CHANNEL_NAMES.forEach((name) => dc.subscribe(name, subscriber));
const unsubscribeAll = () => diag.CHANNEL_NAMES.forEach((name) => dc.unsubscribe(name, subscriber));
cases['diagnostics: exchange without publish sites'] = [() => noSites(exchange), null];
cases['diagnostics: 5 publish sites, no subscriber'] = [() => exchangeSites(exchange), null];
cases['diagnostics: 5 publish sites, all subscribed'] = [() => exchangeSites(exchange) !== null, true, { beforeAll: subscribeAll, afterAll: unsubscribeAll }];

const bench = new Bench({ time: 300, warmupTime: 100 });
for (const [name, [fn, expected, hooks]] of Object.entries(cases)) {
  if (filter && !name.includes(filter)) continue;
  hooks?.beforeAll();
  assert.deepEqual(fn(), expected, `${name} returns the right answer`);
  hooks?.afterAll();
  bench.add(name, fn, hooks);
}
await bench.run();
console.log(`Node ${process.version}`);
console.table(bench.table());
