// Options: defaults, and bad values are rejected with a `TypeError` that names the option and
// the value.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { resolveOptions, DEFAULTS, OptionError } from '../dist/options.js';
import * as api from '../dist/index.js';

/** Asserts a TypeError whose message names `name` and shows `shown` (the value as printed). */
function assertBad(options, name, shown) {
  assert.throws(
    () => resolveOptions(options),
    (err) => {
      assert.ok(err instanceof TypeError, `expected TypeError, got ${err?.constructor?.name}: ${err?.message}`);
      assert.ok(err.message.includes(name), `message ${JSON.stringify(err.message)} does not name ${name}`);
      assert.ok(err.message.includes(shown), `message ${JSON.stringify(err.message)} does not show ${shown}`);
      return true;
    },
    `${name} = ${shown}`,
  );
}

describe('resolveOptions defaults', () => {
  const o = resolveOptions({ listenPort: 9776 });

  it('keeps listenPort', () => {
    assert.equal(o.listenPort, 9776);
    assert.equal(resolveOptions({ listenPort: 0 }).listenPort, 0);
    assert.equal(resolveOptions({ listenPort: 65535 }).listenPort, 65535);
  });

  it('table defaults', () => {
    assert.equal(o.listenHost, '127.0.0.1');
    assert.equal(o.enableHttp2, true);
    assert.equal(o.enableWebsockets, true);
    assert.equal(o.maxConnections, 1000);
    assert.equal(o.connectionQueueTimeoutMs, 10_000); // "more wait, bounded [10 s]"
    assert.equal(o.idleTimeoutMs, 120_000);
    assert.equal(o.keepaliveMs, 30_000);
    assert.equal(o.headerRoutingEnabled, true);
    assert.equal(o.workspaceIsolation, true);
  });

  it('product defaults: resolver cache 2 s, Host preserved, 5 s connect, 10 s drain, HTTP/1.1 upstreams', () => {
    assert.equal(o.portResolverCacheTtlMs, 2_000);
    assert.equal(o.preserveHost, true);
    assert.equal(o.upstreamConnectTimeoutMs, 5_000);
    assert.equal(o.drainTimeoutMs, 10_000);
    assert.equal(o.upstreamProtocol, 'http1');
    assert.equal(o.fallback, undefined);
    assert.equal(o.containerPortResolver, undefined);
    assert.equal(o.dockerSocketPath, undefined);
    assert.equal(o.logger, undefined);
  });

  it('client and upstream idle timeouts default to idleTimeoutMs', () => {
    assert.equal(o.clientIdleTimeoutMs, 120_000);
    assert.equal(o.upstreamIdleTimeoutMs, 120_000);
    const custom = resolveOptions({ listenPort: 0, idleTimeoutMs: 5000 });
    assert.equal(custom.clientIdleTimeoutMs, 5000);
    assert.equal(custom.upstreamIdleTimeoutMs, 5000);
    const split = resolveOptions({ listenPort: 0, idleTimeoutMs: 5000, clientIdleTimeoutMs: 1000, upstreamIdleTimeoutMs: 2000 });
    assert.deepEqual([split.idleTimeoutMs, split.clientIdleTimeoutMs, split.upstreamIdleTimeoutMs], [5000, 1000, 2000]);
  });

  it('maxSocketsPerUpstream follows a larger maxConnections unless given', () => {
    assert.equal(o.maxSocketsPerUpstream, 1024);
    assert.equal(resolveOptions({ listenPort: 0, maxConnections: 10_000 }).maxSocketsPerUpstream, 10_000);
    assert.equal(resolveOptions({ listenPort: 0, maxConnections: 10 }).maxSocketsPerUpstream, 1024);
    assert.equal(resolveOptions({ listenPort: 0, maxConnections: 10_000, maxSocketsPerUpstream: 64 }).maxSocketsPerUpstream, 64);
  });

  it('debug logging is off by default', () => {
    assert.notEqual(o.logLevel, 'debug');
    assert.equal(o.logLevel, 'info');
  });

  it('DEFAULTS agrees with the resolved values', () => {
    for (const [key, value] of Object.entries(DEFAULTS)) {
      if (key === 'maxIdleSocketsPerUpstream') continue; // clamped to maxSocketsPerUpstream
      assert.equal(o[key], value, key);
    }
  });

  it('keeps given values', () => {
    const handler = () => {};
    const resolver = async () => null;
    const logger = { debug() {}, info() {}, warn() {}, error() {} };
    const r = resolveOptions({
      listenPort: 1,
      listenHost: '0.0.0.0',
      enableHttp2: false,
      enableWebsockets: false,
      maxConnections: 5,
      headerRoutingEnabled: false,
      workspaceIsolation: false,
      preserveHost: false,
      fallback: { handler },
      containerPortResolver: resolver,
      dockerSocketPath: '/tmp/docker.sock',
      portResolverCacheTtlMs: 0,
      logger,
      logLevel: 'debug',
    });
    assert.equal(r.listenHost, '0.0.0.0');
    assert.equal(r.enableHttp2, false);
    assert.equal(r.enableWebsockets, false);
    assert.equal(r.maxConnections, 5);
    assert.equal(r.headerRoutingEnabled, false);
    assert.equal(r.workspaceIsolation, false);
    assert.equal(r.preserveHost, false);
    assert.equal(r.fallback.handler, handler);
    assert.equal(r.containerPortResolver, resolver);
    assert.equal(r.dockerSocketPath, '/tmp/docker.sock');
    assert.equal(r.portResolverCacheTtlMs, 0);
    assert.equal(r.logger, logger);
    assert.equal(r.logLevel, 'debug');
  });

  it('fallback shapes are normalised', () => {
    assert.deepEqual(resolveOptions({ listenPort: 0, fallback: { port: 3000 } }).fallback, { port: 3000, host: '127.0.0.1' });
    assert.deepEqual(resolveOptions({ listenPort: 0, fallback: { port: 3000, host: '::1' } }).fallback, { port: 3000, host: '::1' });
    assert.deepEqual(resolveOptions({ listenPort: 0, fallback: { socketPath: '/tmp/app.sock' } }).fallback, { socketPath: '/tmp/app.sock' });
    const upgrade = () => {};
    const f = resolveOptions({ listenPort: 0, fallback: { handler: () => {}, upgrade } }).fallback;
    assert.equal(f.upgrade, upgrade);
  });
});

describe('resolveOptions rejects bad values with a TypeError naming option and value', () => {
  it('listenPort', () => {
    assertBad({ listenPort: -1 }, 'listenPort', '-1');
    assertBad({ listenPort: 'abc' }, 'listenPort', '"abc"');
    assertBad({ listenPort: '9776' }, 'listenPort', '"9776"');
    assertBad({ listenPort: 70000 }, 'listenPort', '70000');
    assertBad({ listenPort: 65536 }, 'listenPort', '65536');
    assertBad({ listenPort: 1.5 }, 'listenPort', '1.5');
    assertBad({ listenPort: Number.NaN }, 'listenPort', 'NaN');
    assertBad({ listenPort: null }, 'listenPort', 'null');
  });

  it('missing listenPort', () => {
    assertBad({}, 'listenPort', 'undefined');
    assertBad({ listenHost: '127.0.0.1' }, 'listenPort', 'undefined');
  });

  it('not an options object', () => {
    assert.throws(() => resolveOptions(undefined), TypeError);
    assert.throws(() => resolveOptions(null), TypeError);
    assert.throws(() => resolveOptions(9776), /9776/);
  });

  it('maxConnections', () => {
    assertBad({ listenPort: 0, maxConnections: 0 }, 'maxConnections', '0');
    assertBad({ listenPort: 0, maxConnections: -5 }, 'maxConnections', '-5');
    assertBad({ listenPort: 0, maxConnections: 2.5 }, 'maxConnections', '2.5');
    assertBad({ listenPort: 0, maxConnections: '10' }, 'maxConnections', '"10"');
    assertBad({ listenPort: 0, maxConnections: Infinity }, 'maxConnections', 'Infinity');
  });

  it('unknown option', () => {
    assertBad({ listenPort: 0, listenport: 1 }, 'listenport', '1');
    assertBad({ listenPort: 0, bogus: 'x' }, 'bogus', '"x"');
    assertBad({ listenPort: 0, workspaceIsolaton: false }, 'workspaceIsolaton', 'false');
  });

  it('logLevel', () => {
    assertBad({ listenPort: 0, logLevel: 'loud' }, 'logLevel', '"loud"');
    assertBad({ listenPort: 0, logLevel: 'DEBUG' }, 'logLevel', '"DEBUG"');
    assertBad({ listenPort: 0, logLevel: 3 }, 'logLevel', '3');
    for (const level of ['silent', 'error', 'warn', 'info', 'debug']) {
      assert.equal(resolveOptions({ listenPort: 0, logLevel: level }).logLevel, level);
    }
  });

  it('booleans', () => {
    for (const name of ['enableHttp2', 'enableWebsockets', 'headerRoutingEnabled', 'workspaceIsolation', 'preserveHost']) {
      assertBad({ listenPort: 0, [name]: 'yes' }, name, '"yes"');
      assertBad({ listenPort: 0, [name]: 1 }, name, '1');
      assertBad({ listenPort: 0, [name]: null }, name, 'null');
    }
  });

  it('timeouts', () => {
    assertBad({ listenPort: 0, idleTimeoutMs: -1 }, 'idleTimeoutMs', '-1');
    assertBad({ listenPort: 0, keepaliveMs: 'x' }, 'keepaliveMs', '"x"');
    assertBad({ listenPort: 0, upstreamConnectTimeoutMs: 0 }, 'upstreamConnectTimeoutMs', '0');
    assertBad({ listenPort: 0, drainTimeoutMs: 2 ** 31 }, 'drainTimeoutMs', String(2 ** 31));
    assertBad({ listenPort: 0, portResolverCacheTtlMs: -1 }, 'portResolverCacheTtlMs', '-1');
    assertBad({ listenPort: 0, clientIdleTimeoutMs: 1.5 }, 'clientIdleTimeoutMs', '1.5');
  });

  it('listenHost', () => {
    assertBad({ listenPort: 0, listenHost: '' }, 'listenHost', '""');
    assertBad({ listenPort: 0, listenHost: 127 }, 'listenHost', '127');
  });

  it('fallback shapes', () => {
    assertBad({ listenPort: 0, fallback: 3000 }, 'fallback', '3000');
    assertBad({ listenPort: 0, fallback: 'http://localhost:3000' }, 'fallback', '"http://localhost:3000"');
    assertBad({ listenPort: 0, fallback: null }, 'fallback', 'null');
    assertBad({ listenPort: 0, fallback: {} }, 'fallback', '{}');
    assertBad({ listenPort: 0, fallback: { host: 'x' } }, 'fallback', '{"host":"x"}');
    assertBad({ listenPort: 0, fallback: { port: 0 } }, 'fallback.port', '0');
    assertBad({ listenPort: 0, fallback: { port: 65536 } }, 'fallback.port', '65536');
    assertBad({ listenPort: 0, fallback: { port: '3000' } }, 'fallback.port', '"3000"');
    assertBad({ listenPort: 0, fallback: { port: 3000, host: '' } }, 'fallback.host', '""');
    assertBad({ listenPort: 0, fallback: { socketPath: '' } }, 'fallback.socketPath', '""');
    assertBad({ listenPort: 0, fallback: { socketPath: 5 } }, 'fallback.socketPath', '5');
    assertBad({ listenPort: 0, fallback: { handler: 'nope' } }, 'fallback.handler', '"nope"');
    assertBad({ listenPort: 0, fallback: { handler: () => {}, upgrade: true } }, 'fallback.upgrade', 'true');
  });

  it('resolver, socket path, logger, upstream protocol', () => {
    assertBad({ listenPort: 0, containerPortResolver: 'docker' }, 'containerPortResolver', '"docker"');
    assertBad({ listenPort: 0, dockerSocketPath: '' }, 'dockerSocketPath', '""');
    assertBad({ listenPort: 0, logger: console.log }, 'logger', 'a function');
    assertBad({ listenPort: 0, logger: { info() {} } }, 'logger', 'logger: {}');
    assertBad({ listenPort: 0, logger: null }, 'logger', 'null');
    assertBad({ listenPort: 0, upstreamProtocol: 'http3' }, 'upstreamProtocol', '"http3"');
  });

  it('the message reads "Invalid option <name>: <value> (expected ...)"', () => {
    assert.throws(() => resolveOptions({ listenPort: -1 }), {
      name: 'TypeError',
      message: 'Invalid option listenPort: -1 (expected an integer from 0 to 65535)',
    });
  });
});

describe('OptionError: what the CLI and config file errors are made from', () => {
  it('an unknown option is a TypeError whose message says "unknown option" and names it', () => {
    assert.throws(() => resolveOptions({ listenPort: 0, listenport: 1 }), {
      name: 'TypeError',
      message: 'Unknown option listenport: 1 (the README lists the options)',
    });
    assert.throws(() => resolveOptions({ listenPort: 0, bogus: 'x' }), /unknown option/i);
  });

  it('carries the option path, the value and what was expected (undefined when the name is unknown)', () => {
    const bad = (options) => {
      try {
        resolveOptions(options);
      } catch (err) {
        assert.ok(err instanceof OptionError);
        assert.ok(err instanceof TypeError);
        return { option: err.option, value: err.value, expected: err.expected };
      }
      assert.fail('no error');
    };
    assert.deepEqual(bad({ listenPort: -1 }), { option: 'listenPort', value: -1, expected: 'an integer from 0 to 65535' });
    assert.deepEqual(bad({ listenPort: 0, bogus: 1 }), { option: 'bogus', value: 1, expected: undefined });
    assert.deepEqual(bad({ listenPort: 0, fallback: { port: 0 } }), { option: 'fallback.port', value: 0, expected: 'an integer from 1 to 65535' });
    assert.deepEqual(bad({ listenPort: 0, tls: { certFile: 'a', keyFile: 'b', sni: { 'a.test': { certFile: 'c', keyFile: 5 } } } }), {
      option: 'tls.sni["a.test"].keyFile',
      value: 5,
      expected: 'a file path',
    });
  });

  it('unknown fields inside tls, its sni entries and fallback are refused by their path (a misspelt field is not ignored)', () => {
    assertBad({ listenPort: 0, tls: { certFile: 'a', keyFile: 'b', cert: 'c' } }, 'tls.cert', '"c"');
    assertBad({ listenPort: 0, tls: { certFile: 'a', keyFile: 'b', sni: { 'a.test': { cert: 'c' } } } }, 'tls.sni["a.test"].cert', '"c"');
    assertBad({ listenPort: 0, fallback: { port: 3000, hots: 'x' } }, 'fallback.hots', '"x"');
    assertBad({ listenPort: 0, fallback: { socketPath: '/tmp/a.sock', port: 1 } }, 'fallback.port', '1');
    assertBad({ listenPort: 0, fallback: { handler: () => {}, upgarde: () => {} } }, 'fallback.upgarde', 'a function');
    assert.throws(() => resolveOptions({ listenPort: 0, fallback: { port: 3000, hots: 'x' } }), /^TypeError: Unknown option fallback\.hots/);
  });

  it('is exported by the package', () => {
    assert.equal(api.OptionError, OptionError);
  });
});
