// Routing rules 1-4 (rule 5, absolute-form, is the caller's job: it passes the
// authority as `host`), through the pure router and the host pattern helpers.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  route,
  isRouteError,
  isContainerRoute,
  ERR_EMPTY_HEADER,
  ERR_INVALID_PORT,
  ERR_INVALID_WORKSPACE,
  LOCAL_HOST,
} from '../dist/route/router.js';
import { matchHost, hostName, parsePort, KNOWN_PORT_NAMES } from '../dist/route/host-patterns.js';

const ON = { headerRoutingEnabled: true, workspaceIsolation: true };
const NO_ISOLATION = { headerRoutingEnabled: true, workspaceIsolation: false };
const NO_HEADERS = { headerRoutingEnabled: false, workspaceIsolation: true };

function input({ port, workspace, host } = {}) {
  return { portHeader: port, workspaceHeader: workspace, host };
}

/** Asserts a TCP target and returns it. */
function assertTarget(r, host, port) {
  assert.ok(r !== null && typeof r === 'object', `expected a target, got ${JSON.stringify(r)}`);
  assert.equal(r.kind, undefined, `expected a target, got ${JSON.stringify(r)}`);
  assert.equal(r.host, host);
  assert.equal(r.port, port);
  assert.equal(r.socketPath, undefined);
  assert.equal(r.key, `${host}:${port}`);
  return r;
}

function assertError(r, status, message) {
  assert.ok(isRouteError(r), `expected a route error, got ${JSON.stringify(r)}`);
  assert.equal(r.status, status);
  assert.equal(r.message, message);
}

describe('rule 1: X-Cmux-Port-Internal', () => {
  it('routes to 127.0.0.1:<port>', () => {
    assertTarget(route(ON, input({ port: '3000' }), false), '127.0.0.1', 3000);
    assert.equal(LOCAL_HOST, '127.0.0.1');
  });

  it('accepts the bounds 1 and 65535', () => {
    assertTarget(route(ON, input({ port: '1' }), false), '127.0.0.1', 1);
    assertTarget(route(ON, input({ port: '65535' }), false), '127.0.0.1', 65535);
  });

  it('trims the value', () => {
    assertTarget(route(ON, input({ port: '  8080  ' }), false), '127.0.0.1', 8080);
    assertTarget(route(ON, input({ port: '\t8080\t' }), false), '127.0.0.1', 8080);
  });

  it('empty (or blank) value -> 400 header value cannot be empty', () => {
    for (const port of ['', '   ', '\t']) {
      const r = route(ON, input({ port }), false);
      assertError(r, 400, 'header value cannot be empty');
      assert.equal(r, ERR_EMPTY_HEADER);
    }
  });

  it('not an integer 1-65535 -> 400 invalid port in X-Cmux-Port-Internal', () => {
    for (const port of ['0', '65536', 'abc', '80a', '-1', '1.5', '+80', '1e3', '0x50', '99999', '8 0', '٣٠٠٠']) {
      const r = route(ON, input({ port }), false);
      assertError(r, 400, 'invalid port in X-Cmux-Port-Internal');
      assert.equal(r, ERR_INVALID_PORT, `port ${JSON.stringify(port)}`);
    }
  });

  it('wins over any host rule (first match wins)', () => {
    assertTarget(route(ON, input({ port: '4000', host: 'web.3000.localhost' }), true), '127.0.0.1', 4000);
    assertTarget(route(ON, input({ port: '4000', host: 'ws-1-3000.localhost' }), false), '127.0.0.1', 4000);
    // an invalid header is an error, not a fall-through to the Host
    assertError(route(ON, input({ port: 'x', host: '3000.cmux.sh' }), false), 400, 'invalid port in X-Cmux-Port-Internal');
  });

  it('with X-Cmux-Workspace-Internal and isolation on -> workspace IP', () => {
    assertTarget(route(ON, input({ port: '3000', workspace: 'workspace-1' }), false), '127.18.0.1', 3000);
    assertTarget(route(ON, input({ port: '3000', workspace: 'workspace-256' }), false), '127.18.1.0', 3000);
    assertTarget(route(ON, input({ port: '3000', workspace: 'workspace-a' }), false), '127.18.176.32', 3000);
    assertTarget(route(ON, input({ port: '3000', workspace: 'org/workspace-7' }), false), '127.18.0.7', 3000);
    assertTarget(route(ON, input({ port: '3000', workspace: ' workspace-2 ' }), false), '127.18.0.2', 3000);
  });

  it('empty workspace header with isolation on -> 400', () => {
    for (const workspace of ['', '  ']) {
      const r = route(ON, input({ port: '3000', workspace }), false);
      assertError(r, 400, 'header value cannot be empty');
    }
  });

  it('workspace number overflowing u32 -> 400', () => {
    const r = route(ON, input({ port: '3000', workspace: 'workspace-4294967296' }), false);
    assert.ok(isRouteError(r));
    assert.equal(r.status, 400);
    assert.equal(r, ERR_INVALID_WORKSPACE);
  });

  it('isolation off: workspace header ignored, target 127.0.0.1', () => {
    assertTarget(route(NO_ISOLATION, input({ port: '3000', workspace: 'workspace-1' }), false), '127.0.0.1', 3000);
    assertTarget(route(NO_ISOLATION, input({ port: '3000', workspace: 'workspace-a' }), false), '127.0.0.1', 3000);
  });

  it('workspace header alone (no port header) does not route', () => {
    assert.equal(route(ON, input({ workspace: 'workspace-1' }), false), null);
    assertTarget(route(ON, input({ workspace: 'workspace-1', host: '3000.cmux.sh' }), false), '127.0.0.1', 3000);
  });

  it('headerRoutingEnabled false ignores both headers', () => {
    assert.equal(route(NO_HEADERS, input({ port: '3000' }), false), null);
    assert.equal(route(NO_HEADERS, input({ port: '', workspace: '' }), false), null);
    assert.equal(route(NO_HEADERS, input({ port: 'abc' }), false), null);
    assertTarget(route(NO_HEADERS, input({ port: '4000', workspace: 'workspace-1', host: '3000.cmux.local' }), false), '127.0.0.1', 3000);
  });
});

describe('rule 2: <container>.<port>.localhost', () => {
  it('without a resolver: 127.0.0.1:<port>', () => {
    assertTarget(route(ON, input({ host: 'web.3000.localhost' }), false), '127.0.0.1', 3000);
    assertTarget(route(ON, input({ host: 'web.3000.localhost:9776' }), false), '127.0.0.1', 3000);
  });

  it('with a resolver: an unresolved container route', () => {
    const r = route(ON, input({ host: 'web.3000.localhost:9776' }), true);
    assert.ok(isContainerRoute(r));
    assert.deepEqual({ ...r }, { kind: 'container', container: 'web', port: 3000 });
  });

  it('container names may contain dots', () => {
    const r = route(ON, input({ host: 'my.app.v2.8080.localhost' }), true);
    assert.deepEqual({ ...r }, { kind: 'container', container: 'my.app.v2', port: 8080 });
    assertTarget(route(ON, input({ host: 'my.app.v2.8080.localhost' }), false), '127.0.0.1', 8080);
    assert.deepEqual(matchHost('a.b.c.443.localhost'), { kind: 'container', container: 'a.b.c', port: 443 });
    // a container that looks like rule 3 stays a container
    assert.deepEqual(matchHost('ws-1.3000.localhost'), { kind: 'container', container: 'ws-1', port: 3000 });
  });

  it('known port names', () => {
    const expected = { vscode: 39378, worker: 39377, extension: 39376, proxy: 39379, vnc: 39380, cdp: 39381 };
    assert.deepEqual(Object.fromEntries(KNOWN_PORT_NAMES), expected);
    for (const [name, port] of Object.entries(expected)) {
      assertTarget(route(ON, input({ host: `box.${name}.localhost` }), false), '127.0.0.1', port);
      const r = route(ON, input({ host: `box.${name}.localhost:9776` }), true);
      assert.deepEqual({ ...r }, { kind: 'container', container: 'box', port }, name);
      // upper case too
      assert.deepEqual({ ...route(ON, input({ host: `BOX.${name.toUpperCase()}.LOCALHOST` }), true) }, { kind: 'container', container: 'box', port });
    }
  });

  it('unknown names, bad ports and empty containers do not match', () => {
    for (const host of ['box.web.localhost', 'box.0.localhost', 'box.65536.localhost', 'box.3000x.localhost', '.3000.localhost', 'box..localhost', 'box.toString.localhost', 'box.hasOwnProperty.localhost']) {
      assert.equal(route(ON, input({ host }), true), null, host);
      assert.equal(route(ON, input({ host }), false), null, host);
    }
  });

  it('Object.prototype keys are not port names (__proto__, constructor)', () => {
    // KNOWN_PORT_NAMES must only know the six names; a port is always an integer 1-65535.
    for (const host of ['box.__proto__.localhost', 'box.constructor.localhost', 'box.CONSTRUCTOR.localhost:9776']) {
      assert.equal(route(ON, input({ host }), false), null, host);
      assert.equal(route(ON, input({ host }), true), null, host);
      assert.equal(matchHost(hostName(host)), null, host);
    }
  });

  it('ignores headerRoutingEnabled and isolation', () => {
    assertTarget(route(NO_HEADERS, input({ host: 'web.3000.localhost' }), false), '127.0.0.1', 3000);
    assertTarget(route(NO_ISOLATION, input({ host: 'web.3000.localhost' }), false), '127.0.0.1', 3000);
  });
});

describe('rule 3: <workspace>-<port>.localhost', () => {
  it('routes to the workspace IP, split at the last "-"', () => {
    assertTarget(route(ON, input({ host: 'workspace-1-3000.localhost' }), false), '127.18.0.1', 3000);
    assertTarget(route(ON, input({ host: 'workspace-256-3000.localhost:9776' }), false), '127.18.1.0', 3000);
    assertTarget(route(ON, input({ host: 'workspace-a-5173.localhost' }), true), '127.18.176.32', 5173);
    assert.deepEqual(matchHost('my-long-ws-name-8080.localhost'), { kind: 'workspace', workspace: 'my-long-ws-name', port: 8080 });
  });

  it('isolation off -> 127.0.0.1', () => {
    assertTarget(route(NO_ISOLATION, input({ host: 'workspace-1-3000.localhost' }), false), '127.0.0.1', 3000);
  });

  it('overflowing workspace number -> 400', () => {
    const r = route(ON, input({ host: 'workspace-4294967296-3000.localhost' }), false);
    assert.equal(r, ERR_INVALID_WORKSPACE);
    assert.equal(r.status, 400);
  });

  it('non-matching shapes return null', () => {
    for (const host of ['-3000.localhost', 'ws-.localhost', 'ws-0.localhost', 'ws-65536.localhost', 'ws-abc.localhost', 'wsonly.localhost', 'localhost', '.localhost', 'localhost:3000']) {
      assert.equal(route(ON, input({ host }), false), null, host);
    }
  });
});

describe('rule 4: cmux.local / cmux.sh / cmux.dev', () => {
  it('<port>.cmux.local|sh|dev -> 127.0.0.1:<port>', () => {
    for (const suffix of ['cmux.local', 'cmux.sh', 'cmux.dev']) {
      assertTarget(route(ON, input({ host: `3000.${suffix}` }), false), '127.0.0.1', 3000);
      assertTarget(route(ON, input({ host: `8080.${suffix}:443` }), true), '127.0.0.1', 8080);
    }
  });

  it('port-<port>-<id>.cmux.sh -> 127.0.0.1:<port>', () => {
    assertTarget(route(ON, input({ host: 'port-3000-abc123.cmux.sh' }), false), '127.0.0.1', 3000);
    assertTarget(route(ON, input({ host: 'port-5173-abc-def.cmux.sh' }), false), '127.0.0.1', 5173);
    assert.equal(route(ON, input({ host: 'port-abc-123.cmux.sh' }), false), null);
    assert.equal(route(ON, input({ host: 'port-0-abc.cmux.sh' }), false), null);
    assert.equal(route(ON, input({ host: 'port-3000.cmux.sh' }), false), null);
  });

  it('cmux-<id>-<scope>-<port>.cmux.sh -> workspace <scope> IP', () => {
    assertTarget(route(ON, input({ host: 'cmux-abc123-workspace-1-3000.cmux.sh' }), false), '127.18.0.1', 3000);
    assertTarget(route(ON, input({ host: 'cmux-abc123-workspace-a-3000.cmux.sh' }), false), '127.18.176.32', 3000);
    assert.deepEqual(matchHost('cmux-abc-my-multi-part-scope-8080.cmux.sh'), { kind: 'workspace', workspace: 'my-multi-part-scope', port: 8080 });
    assert.deepEqual(matchHost('cmux-abc-single-8080.cmux.sh'), { kind: 'workspace', workspace: 'single', port: 8080 });
  });

  it('cmux-<id>-<port> (no scope) and scope base -> 127.0.0.1', () => {
    assertTarget(route(ON, input({ host: 'cmux-abc123-3000.cmux.sh' }), false), '127.0.0.1', 3000);
    assertTarget(route(ON, input({ host: 'cmux-abc123-base-3000.cmux.sh' }), false), '127.0.0.1', 3000);
    assertTarget(route(ON, input({ host: 'CMUX-ABC123-BASE-3000.CMUX.SH' }), false), '127.0.0.1', 3000);
  });

  it('isolation off: scoped cmux host -> 127.0.0.1', () => {
    assertTarget(route(NO_ISOLATION, input({ host: 'cmux-abc-workspace-1-3000.cmux.sh' }), false), '127.0.0.1', 3000);
  });

  it('overflowing scope number -> 400', () => {
    assert.equal(route(ON, input({ host: 'cmux-abc-ws-4294967296-3000.cmux.sh' }), false), ERR_INVALID_WORKSPACE);
  });

  it('malformed cmux labels do not match', () => {
    for (const host of ['cmux-abc-ws-0.cmux.sh', 'cmux-abc-ws-x.cmux.sh', 'cmux--3000.cmux.sh', 'cmux-3000.cmux.sh', 'cmux.sh', '.cmux.sh', 'a.3000.cmux.sh', '3000.cmux.sh.evil.com', '3000.notcmux.sh.com', '0.cmux.sh', '65536.cmux.local']) {
      assert.equal(route(ON, input({ host }), false), null, host);
    }
  });
});

describe('host normalisation and non-matches', () => {
  it('uppercase hosts route like lower case', () => {
    assertTarget(route(ON, input({ host: 'WEB.3000.LOCALHOST' }), false), '127.0.0.1', 3000);
    assert.deepEqual({ ...route(ON, input({ host: 'Web.App.3000.LocalHost:80' }), true) }, { kind: 'container', container: 'web.app', port: 3000 });
    assertTarget(route(ON, input({ host: 'Workspace-A-3000.LOCALHOST' }), false), '127.18.176.32', 3000);
    assertTarget(route(ON, input({ host: '3000.CMUX.Local' }), false), '127.0.0.1', 3000);
  });

  it('a trailing dot names the same host', () => {
    assertTarget(route(ON, input({ host: 'web.3000.localhost.' }), false), '127.0.0.1', 3000);
    assertTarget(route(ON, input({ host: 'web.3000.localhost.:9776' }), false), '127.0.0.1', 3000);
    assertTarget(route(ON, input({ host: '3000.cmux.sh.' }), false), '127.0.0.1', 3000);
    assertTarget(route(ON, input({ host: 'workspace-1-3000.localhost.' }), false), '127.18.0.1', 3000);
  });

  it('hosts that match nothing return null', () => {
    for (const host of [undefined, '', 'example.com', 'localhost', 'localhost:9776', '127.0.0.1:9776', 'app', 'foo.bar.localhost', 'web.3000.localhost.evil.com', 'web.3000.localhostx', 'cmux.local', 'sh']) {
      assert.equal(route(ON, input({ host }), true), null, String(host));
    }
  });

  it('IPv6 host literals match nothing', () => {
    assert.equal(route(ON, input({ host: '[::1]' }), true), null);
    assert.equal(route(ON, input({ host: '[::1]:9776' }), true), null);
    assert.equal(route(ON, input({ host: '[2001:db8::3000]:3000' }), false), null);
  });
});

describe('hostName / parsePort / matchHost', () => {
  it('hostName strips the port, the trailing dot and lower-cases', () => {
    assert.equal(hostName('Web.3000.LocalHost:9776'), 'web.3000.localhost');
    assert.equal(hostName('a.b'), 'a.b');
    assert.equal(hostName('a.b.'), 'a.b');
    assert.equal(hostName('a.b.:80'), 'a.b');
    assert.equal(hostName('[::1]:9776'), '[::1]');
    assert.equal(hostName('[::1]'), '[::1]');
    assert.equal(hostName('[FE80::1]:80'), '[fe80::1]');
    assert.equal(hostName('LOCALHOST'), 'localhost');
  });

  it('parsePort accepts only decimal 1-65535', () => {
    assert.equal(parsePort('1'), 1);
    assert.equal(parsePort('80'), 80);
    assert.equal(parsePort('65535'), 65535);
    assert.equal(parsePort('08080'), 8080);
    for (const text of ['', '0', '00000', '65536', '99999', '123456', '-1', '+1', '1.5', 'abc', '80a', ' 80', '80 ', '1e3']) {
      assert.equal(parsePort(text), 0, JSON.stringify(text));
    }
  });

  it('matchHost gives the rule kinds', () => {
    assert.deepEqual(matchHost('c.3000.localhost'), { kind: 'container', container: 'c', port: 3000 });
    assert.deepEqual(matchHost('w-3000.localhost'), { kind: 'workspace', workspace: 'w', port: 3000 });
    assert.deepEqual(matchHost('3000.cmux.dev'), { kind: 'local', port: 3000 });
    assert.deepEqual(matchHost('port-3000-x.cmux.sh'), { kind: 'local', port: 3000 });
    assert.deepEqual(matchHost('cmux-x-base-3000.cmux.sh'), { kind: 'local', port: 3000 });
    assert.deepEqual(matchHost('cmux-x-3000.cmux.sh'), { kind: 'local', port: 3000 });
    assert.equal(matchHost('example.com'), null);
  });

  it('targets are interned (one object per address)', () => {
    const a = route(ON, input({ port: '3000' }), false);
    const b = route(ON, input({ host: '3000.cmux.sh' }), false);
    assert.equal(a, b);
    assert.notEqual(a, route(ON, input({ port: '3001' }), false));
  });
});
