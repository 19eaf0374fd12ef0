// Tracing: W3C traceparent/tracestate pass through unchanged; with @opentelemetry/api and a tracer
// provider registered (the OTel SDK with its in-memory exporter), one server span per exchange
// whose context is the traceparent the upstream gets; without the package the proxy runs as before.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { trace, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { startProxy, startUpstream, request, h2connect, h2request, waitFor } from './helpers/servers.mjs';

const PARENT_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_SPAN = '00f067aa0ba902b7';
const TRACEPARENT = `00-${PARENT_TRACE}-${PARENT_SPAN}-01`;
const TRACESTATE = 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7';

function refusedPort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

describe('W3C trace context with no tracer provider registered', () => {
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

  it('HTTP/1.1: traceparent and tracestate reach the upstream unchanged', async () => {
    const res = await request(`${px.url}/t`, { headers: { 'x-cmux-port-internal': String(up.port), traceparent: TRACEPARENT, tracestate: TRACESTATE } });
    assert.equal(res.status, 200);
    const seen = JSON.parse(res.body).headers;
    assert.equal(seen.traceparent, TRACEPARENT);
    assert.equal(seen.tracestate, TRACESTATE);
  });

  it('HTTP/2: traceparent and tracestate reach the upstream unchanged', async () => {
    const session = h2connect(px.port);
    const res = await h2request(session, { ':path': '/t', 'x-cmux-port-internal': String(up.port), traceparent: TRACEPARENT, tracestate: TRACESTATE });
    session.close();
    assert.equal(res.status, 200);
    const seen = JSON.parse(res.body).headers;
    assert.equal(seen.traceparent, TRACEPARENT);
    assert.equal(seen.tracestate, TRACESTATE);
  });
});

describe('OpenTelemetry server spans (SDK with the in-memory exporter)', () => {
  let up;
  let px;
  let exporter;
  let provider;
  before(async () => {
    up = await startUpstream();
    px = await startProxy();
    // Registered after the proxy started: the proxy looks for the provider per exchange.
    exporter = new InMemorySpanExporter();
    provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    assert.ok(trace.setGlobalTracerProvider(provider));
  });
  after(async () => {
    await px.proxy.stop();
    await up.close();
    trace.disable();
    await provider.shutdown();
  });

  function spanFor(requestId) {
    return exporter.getFinishedSpans().find((s) => s.attributes['url.path'] === `/${requestId}`);
  }

  it('HTTP/1.1: a child of the client context; the upstream gets the span context, tracestate unchanged', async () => {
    const res = await request(`${px.url}/h1-span?q=secret`, {
      headers: { host: `app.${up.port}.localhost:8080`, traceparent: TRACEPARENT, tracestate: TRACESTATE },
    });
    assert.equal(res.status, 200);
    assert.ok(await waitFor(() => spanFor('h1-span') !== undefined));
    const span = spanFor('h1-span');
    assert.equal(span.name, 'GET');
    assert.equal(span.kind, SpanKind.SERVER);
    const ctx = span.spanContext();
    assert.equal(ctx.traceId, PARENT_TRACE);
    assert.equal(span.parentSpanContext.spanId, PARENT_SPAN);
    assert.equal(span.parentSpanContext.isRemote, true);
    assert.notEqual(ctx.spanId, PARENT_SPAN);
    assert.deepEqual(
      {
        method: span.attributes['http.request.method'],
        path: span.attributes['url.path'],
        server: span.attributes['server.address'],
        status: span.attributes['http.response.status_code'],
        version: span.attributes['network.protocol.version'],
      },
      { method: 'GET', path: '/h1-span', server: `app.${up.port}.localhost`, status: 200, version: '1.1' },
    );
    assert.notEqual(span.status.code, SpanStatusCode.ERROR);
    const seen = JSON.parse(res.body);
    assert.equal(seen.headers.traceparent, `00-${PARENT_TRACE}-${ctx.spanId}-01`);
    assert.equal(seen.rawHeaders.filter((h) => h.toLowerCase() === 'traceparent').length, 1, 'one traceparent');
    assert.equal(seen.headers.tracestate, TRACESTATE);
  });

  it('HTTP/2 without a client context: a new trace, and the upstream gets its traceparent', async () => {
    const session = h2connect(px.port);
    const res = await h2request(session, { ':path': '/h2-span', 'x-cmux-port-internal': String(up.port) });
    session.close();
    assert.equal(res.status, 200);
    assert.ok(await waitFor(() => spanFor('h2-span') !== undefined));
    const span = spanFor('h2-span');
    assert.equal(span.parentSpanContext, undefined);
    assert.equal(span.attributes['network.protocol.version'], '2');
    assert.equal(span.attributes['http.response.status_code'], 200);
    const ctx = span.spanContext();
    assert.equal(JSON.parse(res.body).headers.traceparent, `00-${ctx.traceId}-${ctx.spanId}-01`);
  });

  it('HTTP/2 with a client context: the upstream gets the span context, tracestate unchanged', async () => {
    const session = h2connect(px.port);
    const res = await h2request(session, { ':path': '/h2-child', 'x-cmux-port-internal': String(up.port), traceparent: TRACEPARENT, tracestate: TRACESTATE });
    session.close();
    assert.ok(await waitFor(() => spanFor('h2-child') !== undefined));
    const ctx = spanFor('h2-child').spanContext();
    assert.equal(ctx.traceId, PARENT_TRACE);
    const seen = JSON.parse(res.body).headers;
    assert.equal(seen.traceparent, `00-${PARENT_TRACE}-${ctx.spanId}-01`);
    assert.equal(seen.tracestate, TRACESTATE);
  });

  it('an upstream that refuses: status 502, error.type, span status ERROR; a routing 400 is no error', async () => {
    const port = await refusedPort();
    const res = await request(`${px.url}/refused-span`, { headers: { 'x-cmux-port-internal': String(port) } });
    assert.equal(res.status, 502);
    assert.ok(await waitFor(() => spanFor('refused-span') !== undefined));
    const span = spanFor('refused-span');
    assert.equal(span.attributes['http.response.status_code'], 502);
    assert.equal(span.attributes['error.type'], 'ECONNREFUSED');
    assert.equal(span.status.code, SpanStatusCode.ERROR);
    const res2 = await request(`${px.url}/noroute-span`, { headers: { host: 'nowhere.example' } });
    assert.equal(res2.status, 400);
    assert.ok(await waitFor(() => spanFor('noroute-span') !== undefined));
    assert.equal(spanFor('noroute-span').attributes['http.response.status_code'], 400);
    assert.notEqual(spanFor('noroute-span').status.code, SpanStatusCode.ERROR);
  });

  it('a malformed client traceparent starts a new trace (and is replaced upstream)', async () => {
    const res = await request(`${px.url}/bad-parent`, { headers: { 'x-cmux-port-internal': String(up.port), traceparent: `00-${'0'.repeat(32)}-${PARENT_SPAN}-01` } });
    assert.ok(await waitFor(() => spanFor('bad-parent') !== undefined));
    const span = spanFor('bad-parent');
    assert.equal(span.parentSpanContext, undefined);
    const ctx = span.spanContext();
    assert.equal(JSON.parse(res.body).headers.traceparent, `00-${ctx.traceId}-${ctx.spanId}-01`);
  });
});

describe('the CLI with OpenTelemetry set up by a preload (node --import)', () => {
  it('makes a server span per exchange and passes its context upstream', async () => {
    // The CLI looks for @opentelemetry/api only when a preload registered its globals.
    const up = await startUpstream();
    const preload = new URL('./fixtures/otel-preload.mjs', import.meta.url).href;
    const cli = fileURLToPath(new URL('../dist/cmux-proxy.js', import.meta.url));
    const child = spawn(process.execPath, ['--import', preload, cli, '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr += c));
    try {
      assert.ok(await waitFor(() => /listening on [^:\s]+:\d+/.test(stderr), { timeoutMs: 10_000 }), `started: ${stderr}`);
      const port = Number(/listening on [^:\s]+:(\d+)/.exec(stderr)[1]);
      const res = await request(`http://127.0.0.1:${port}/x`, { headers: { 'x-cmux-port-internal': String(up.port), traceparent: TRACEPARENT } });
      assert.equal(res.status, 200);
      assert.ok(await waitFor(() => /^span GET /m.test(stderr), { timeoutMs: 5_000 }), `a span line: ${stderr}`);
      const [, traceId, spanId] = /^span GET (\w+) (\w+)$/m.exec(stderr);
      assert.equal(traceId, PARENT_TRACE);
      assert.equal(JSON.parse(res.body).headers.traceparent, `00-${PARENT_TRACE}-${spanId}-01`);
    } finally {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      await up.close();
    }
  });
});

describe('without @opentelemetry/api installed', () => {
  it('the CLI runs and passes traceparent through unchanged', async () => {
    // The bundled CLI alone in a directory whose node_modules has only its dependency.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cmux-no-otel-'));
    const up = await startUpstream();
    let child;
    try {
      const root = fileURLToPath(new URL('..', import.meta.url));
      fs.copyFileSync(path.join(root, 'dist/cmux-proxy.js'), path.join(dir, 'cmux-proxy.js'));
      fs.mkdirSync(path.join(dir, 'node_modules'));
      fs.symlinkSync(path.join(root, 'node_modules/lru-cache'), path.join(dir, 'node_modules/lru-cache'));
      fs.writeFileSync(path.join(dir, 'package.json'), '{"type":"module"}');
      assert.throws(() => createRequire(path.join(dir, 'cmux-proxy.js')).resolve('@opentelemetry/api'), /Cannot find module/);
      child = spawn(process.execPath, [path.join(dir, 'cmux-proxy.js'), '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (c) => (stderr += c));
      assert.ok(await waitFor(() => /listening on [^:\s]+:\d+/.test(stderr), { timeoutMs: 10_000 }), `started: ${stderr}`);
      const port = Number(/listening on [^:\s]+:(\d+)/.exec(stderr)[1]);
      const res = await request(`http://127.0.0.1:${port}/x`, { headers: { 'x-cmux-port-internal': String(up.port), traceparent: TRACEPARENT, tracestate: TRACESTATE } });
      assert.equal(res.status, 200);
      const seen = JSON.parse(res.body).headers;
      assert.equal(seen.traceparent, TRACEPARENT);
      assert.equal(seen.tracestate, TRACESTATE);
    } finally {
      if (child && child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      await up.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
