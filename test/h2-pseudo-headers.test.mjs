// RFC 9113 §8.3.1 pseudo-header checks the proxy makes itself. nghttp2 skips its :path checks
// when :scheme is neither http nor https, so `:scheme: foo` let `GET http://admin.internal/secret`,
// `GET *` and `GET evil` reach the upstream's request line; `:authority` with userinfo was
// accepted (HTTP/1.1 absolute-form with userinfo gets 400); `:method: head` was forwarded while
// the proxy frames responses by the exact name HEAD. Each is now a 400 with a fixed text body.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startProxy, startUpstream } from './helpers/servers.mjs';
import { ERROR, H2RawClient, errorName, headersFrame } from './helpers/h2-raw.mjs';

/**
 * nghttp2 1.64 and later (Node 22.12+, 24) reset a stream whose `:authority` or `host` holds an
 * '@' (RFC 9113 §8.3.1) before the proxy sees it; earlier ones (Node 20) pass it on and the
 * proxy answers 400 itself. Either way nothing reaches the upstream.
 */
const [nghttp2Major, nghttp2Minor] = process.versions.nghttp2.split('.').map(Number);
const NGHTTP2_REJECTS_USERINFO = nghttp2Major > 1 || nghttp2Minor >= 64;

describe('HTTP/2 pseudo-header validation', () => {
  let up;
  let px;
  before(async () => {
    up = await startUpstream();
    px = await startProxy();
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
  });

  /** Sends one request's exact header list on a fresh connection; returns its outcome. */
  async function send(list) {
    const c = await H2RawClient.connect(px.port);
    try {
      c.send(headersFrame(1, list, { endStream: true }));
      return await c.streamOutcome(1);
    } finally {
      c.close();
    }
  }

  const list = ({ method = 'GET', scheme = 'http', authority = 'localhost', path = '/' }) => [
    [':method', method],
    [':scheme', scheme],
    [':authority', authority],
    [':path', path],
    ['x-cmux-port-internal', String(up.port)],
  ];

  const REFUSED = [
    [':scheme foo, :path absolute URI', { scheme: 'foo', path: 'http://admin.internal/secret' }, 'invalid :scheme'],
    [':scheme foo, :path *', { scheme: 'foo', path: '*' }, 'invalid :scheme'],
    [':scheme foo, :path evil', { scheme: 'foo', path: 'evil' }, 'invalid :scheme'],
    [':scheme ftp', { scheme: 'ftp', path: '/x' }, 'invalid :scheme'],
    [':scheme HTTP (case)', { scheme: 'HTTP', path: '/x' }, 'invalid :scheme'],
    [':authority with userinfo', { authority: 'user:secret@localhost', path: '/x' }, 'userinfo in :authority'],
    [':method head (lower-case HEAD)', { method: 'head', path: '/x' }, 'invalid :method'],
    [':method Get (mixed case)', { method: 'Get', path: '/x' }, 'invalid :method'],
  ];

  /** Asserts nghttp2's own refusal: RST_STREAM(PROTOCOL_ERROR), no response head. */
  function assertResetByNghttp2(out, name) {
    assert.equal(out.rstCode, ERROR.PROTOCOL_ERROR, `${name}: status ${out.status} rst ${errorName(out.rstCode)}`);
    assert.equal(out.status, undefined);
  }

  for (const [name, fields, message] of REFUSED) {
    const byNghttp2 = NGHTTP2_REJECTS_USERINFO && message.startsWith('userinfo');
    it(`${name} -> ${byNghttp2 ? `RST_STREAM(PROTOCOL_ERROR) from nghttp2 ${process.versions.nghttp2}` : `400 "${message}"`}, nothing reaches the upstream`, async () => {
      const before = up.requests.length;
      const out = await send(list(fields));
      if (byNghttp2) {
        assertResetByNghttp2(out, name);
        assert.equal(up.requests.length, before, `${name}: forwarded to the upstream`);
        return;
      }
      assert.equal(out.status, 400, `${name}: status ${out.status} rst ${errorName(out.rstCode)}`);
      assert.equal(out.body, message);
      assert.equal(out.headers.find(([n]) => n === 'content-type')?.[1], 'text/plain; charset=utf-8');
      assert.equal(up.requests.length, before, `${name}: forwarded to the upstream`);
    });
  }

  it(`host header with userinfo -> ${NGHTTP2_REJECTS_USERINFO ? 'RST_STREAM(PROTOCOL_ERROR) from nghttp2' : '400'}, not forwarded`, async () => {
    const before = up.requests.length;
    const l = list({ path: '/x' }).filter(([n]) => n !== ':authority');
    l.push(['host', 'user@localhost']);
    const out = await send(l);
    if (NGHTTP2_REJECTS_USERINFO) {
      assertResetByNghttp2(out, 'host with userinfo');
    } else {
      assert.equal(out.status, 400);
      assert.equal(out.body, 'userinfo in host');
    }
    assert.equal(up.requests.length, before);
  });

  it('OPTIONS * is forwarded as asterisk-form; :scheme https over h2c is accepted', async () => {
    const out = await send(list({ method: 'OPTIONS', path: '*' }));
    assert.equal(out.status, 200);
    assert.equal(JSON.parse(out.body).url, '*');
    const out2 = await send(list({ scheme: 'https', path: '/s' }));
    assert.equal(out2.status, 200);
    assert.equal(JSON.parse(out2.body).url, '/s');
  });

  it('an extension method (upper-case, not a standard name) is still forwarded', async () => {
    const out = await send(list({ method: 'PURGE', path: '/p' }));
    assert.equal(out.status, 200);
    assert.equal(JSON.parse(out.body).method, 'PURGE');
  });
});
