/**
 * OpenTelemetry server spans, when the embedding process has `@opentelemetry/api` (an optional
 * peer dependency, loaded once at start) and a tracer provider registered. Without the package
 * the proxy holds `null` and an exchange costs one null check; with the package but no provider,
 * one provider lookup. The upstream gets the span's context in `traceparent`; `tracestate`
 * passes unchanged (the span's trace state is the client's).
 */

/** The parts of `@opentelemetry/api` used here (structural: the package may be absent). */
interface SpanContext {
  traceId: string;
  spanId: string;
  traceFlags: number;
  isRemote?: boolean;
  traceState?: unknown;
}

export interface Span {
  spanContext(): SpanContext;
  setAttribute(key: string, value: string | number | boolean): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}

interface Tracer {
  startSpan(name: string, options: { kind: number; attributes: Record<string, string | number | boolean> }, context?: unknown): Span;
}

interface TracerProvider {
  getTracer(name: string, version?: string): Tracer;
  getDelegate?(): unknown;
}

interface OtelApi {
  trace: {
    getTracerProvider(): TracerProvider;
    setSpanContext(context: unknown, spanContext: SpanContext): unknown;
  };
  ROOT_CONTEXT: unknown;
  ProxyTracerProvider: new () => { getDelegate(): unknown };
  createTraceState?: (raw: string) => unknown;
  SpanKind: { SERVER: number };
  SpanStatusCode: { ERROR: number };
}

/** A request as the span needs it. */
export interface Traced {
  readonly method: string;
  readonly path: string;
  readonly host: string | undefined;
  readonly raw: readonly string[];
  readonly clientVersion: string;
  readonly proto: 'http' | 'https';
  readonly clientAddress: string;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ZERO_TRACE = '00000000000000000000000000000000';
const ZERO_SPAN = '0000000000000000';

export class Tracing {
  private readonly api: OtelApi;
  /** What an unregistered global provider delegates to. */
  private readonly noop: unknown;
  private provider: unknown = null;
  private tracer: Tracer | null = null;

  constructor(api: OtelApi) {
    this.api = api;
    this.noop = new api.ProxyTracerProvider().getDelegate();
  }

  /** A server span for this request, or null when no tracer provider is registered. */
  start(req: Traced): Span | null {
    const api = this.api;
    const global = api.trace.getTracerProvider();
    const provider = global.getDelegate === undefined ? global : global.getDelegate();
    if (provider === this.noop) return null;
    let tracer = this.tracer;
    if (provider !== this.provider || tracer === null) {
      this.provider = provider;
      tracer = this.tracer = global.getTracer('cmux-proxy');
    }
    const path = req.path;
    const q = path.indexOf('?');
    const attributes: Record<string, string | number | boolean> = {
      'http.request.method': req.method,
      'url.path': q === -1 ? path : path.slice(0, q),
      'url.scheme': req.proto,
      'network.protocol.version': req.clientVersion,
      'client.address': req.clientAddress,
    };
    if (req.host !== undefined && req.host !== '') attributes['server.address'] = hostname(req.host);
    return tracer.startSpan(req.method, { kind: api.SpanKind.SERVER, attributes }, this.parent(req.raw));
  }

  /** The client's W3C trace context as the span's parent (RFC: W3C Trace Context, version 00 fields). */
  private parent(raw: readonly string[]): unknown {
    let traceparent: string | undefined;
    let tracestate: string | undefined;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!;
      if (name.length === 11 && name.toLowerCase() === 'traceparent') {
        // Two traceparent fields: no parent (the spec says to start a new trace).
        if (traceparent !== undefined) return this.api.ROOT_CONTEXT;
        traceparent = raw[i + 1]!;
      } else if (name.length === 10 && name.toLowerCase() === 'tracestate') {
        tracestate = tracestate === undefined ? raw[i + 1]! : `${tracestate},${raw[i + 1]!}`;
      }
    }
    const api = this.api;
    if (traceparent === undefined) return api.ROOT_CONTEXT;
    const m = TRACEPARENT.exec(traceparent.trim());
    if (m === null || m[1] === 'ff' || (m[1] === '00' && m[5] !== undefined) || m[2] === ZERO_TRACE || m[3] === ZERO_SPAN) return api.ROOT_CONTEXT;
    const spanContext: SpanContext = { traceId: m[2]!, spanId: m[3]!, traceFlags: parseInt(m[4]!, 16) & 0xff, isRemote: true };
    if (tracestate !== undefined && api.createTraceState !== undefined) spanContext.traceState = api.createTraceState(tracestate);
    return api.trace.setSpanContext(api.ROOT_CONTEXT, spanContext);
  }

  /** The span is over: its status code and, for failures, its error. */
  end(span: Span, status: number, code: string): void {
    if (status > 0) span.setAttribute('http.response.status_code', status);
    if (code !== '') span.setAttribute('error.type', code);
    // 4xx answers are the client's doing (HTTP semantic conventions); 5xx, resets and aborts are errors.
    if (status >= 500 || (code !== '' && status < 400)) span.setStatus({ code: this.api.SpanStatusCode.ERROR, message: code === '' ? undefined : code });
    span.end();
  }
}

/** `traceparent` for the upstream: the span's own context. */
export function traceparentOf(span: Span): string {
  const c = span.spanContext();
  return `00-${c.traceId}-${c.spanId}-${(c.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

function hostname(host: string): string {
  if (host.charCodeAt(0) === 91 /* [ */) {
    const close = host.indexOf(']');
    return close === -1 ? host : host.slice(1, close);
  }
  const colon = host.lastIndexOf(':');
  return colon === -1 ? host : host.slice(0, colon);
}

/** The module name, in a variable so no bundler or type checker reaches for it. */
const OTEL_API = '@opentelemetry/api';

/** Where `@opentelemetry/api` 1.x keeps its globals (tracer provider, propagator, ...). */
const OTEL_GLOBAL = Symbol.for('opentelemetry.js.api.1');
let onlyWhenRegistered = false;

/**
 * The CLI owns its process: OpenTelemetry can only be set up there by a preload (`node --import
 * ./otel.mjs`), which registers its globals before the proxy starts. Without them the package is
 * not loaded at all (it costs a fresh process ~1 MiB and a startup compile of its ~40 modules).
 */
export function loadTracingOnlyWhenRegistered(): void {
  onlyWhenRegistered = true;
}

/** Loads `@opentelemetry/api` if the process can; null when it cannot (the proxy runs without it). */
export async function loadTracing(): Promise<Tracing | null> {
  if (onlyWhenRegistered && (globalThis as Record<symbol, unknown>)[OTEL_GLOBAL] === undefined) return null;
  try {
    const api = (await import(OTEL_API)) as OtelApi & { default?: OtelApi };
    const resolved = api.trace !== undefined ? api : api.default;
    if (resolved?.trace === undefined || resolved.ProxyTracerProvider === undefined) return null;
    return new Tracing(resolved);
  } catch {
    return null;
  }
}
