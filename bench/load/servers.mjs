// The processes a benchmark talks to. Backends (on the load generator's CPU): an nginx upstream,
// a Node upload sink and a `ws` echo server. Systems under test (on the proxy CPU): this proxy,
// the baseline Node proxy with and without keep-alive, nginx as a reverse proxy, http2-proxy,
// fastify + @fastify/http-proxy, http-proxy-3, plus "direct" (no proxy at all) and a bare `node`
// process for idle memory.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, startProcess, stopProcess, waitForPort, sleep } from './processes.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../..');
export const PROXY_CPU = 0;
export const LOAD_CPU = 1;
export const SMALL_BODY = `${'x'.repeat(99)}\n`; // 100 bytes
export const LARGE_BYTES = 1024 * 1024;
const NOFILE = 20000;
export const NGINX = existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx';

export const paths = {
  cli: join(repoRoot, 'dist/cmux-proxy.js'),
  baseline: resolve(here, '../baseline/old-cmux-proxy.mjs'),
  http2Proxy: join(here, 'http2-proxy-server.mjs'),
  fastify: join(here, 'fastify-proxy-server.mjs'),
  httpProxy3: join(here, 'http-proxy-3-server.mjs'),
  nodeSplice: join(here, 'node-splice-server.mjs'),
  uploadSink: join(here, 'upload-sink.mjs'),
  wsEcho: join(here, 'ws-echo-server.mjs'),
};

/**
 * The one certificate every TLS row uses: ECDSA P-256, self-signed for localhost, made with the
 * openssl CLI in the run's temp dir. Returns { cert, key } (paths).
 */
export function makeCertificate(workDir) {
  const dir = join(workDir, 'tls');
  mkdirSync(dir, { recursive: true });
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '7', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'ignore' });
  return { cert, key };
}

/** nginx server-block lines for TLS on `port` with HTTP/2 (ALPN h2, http/1.1) and a session cache. */
function nginxTls(port, tls) {
  // nginx before 1.25.1 takes http2 as a listen parameter
  return `    listen 127.0.0.1:${port} ssl http2 backlog=4096;
    ssl_certificate ${tls.cert};
    ssl_certificate_key ${tls.key};
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;`;
}

// ---- nginx ------------------------------------------------------------------------------------

function nginxMain(prefix, body, workerConnections) {
  const tmp = (name) => `${name}_temp_path ${join(prefix, `${name}_temp`)};`;
  return `# written by bench/load/servers.mjs
${process.getuid?.() === 0 ? 'user root root;' : ''}
worker_processes 1;
worker_rlimit_nofile ${NOFILE};
pid ${join(prefix, 'nginx.pid')};
error_log ${join(prefix, 'error.log')} warn;
events { worker_connections ${workerConnections}; }
http {
  access_log off;
  ${tmp('client_body')} ${tmp('proxy')} ${tmp('fastcgi')} ${tmp('uwsgi')} ${tmp('scgi')}
  keepalive_requests 1000000;
  keepalive_timeout 120s;
${body}
}
`;
}

/** Prints the first few error/alert lines of an nginx error log to stderr, if any. */
export function reportNginxErrors(name, prefix) {
  try {
    const lines = readFileSync(join(prefix, 'error.log'), 'utf8')
      .split('\n')
      .filter((l) => /\[(error|crit|alert|emerg)\]/.test(l));
    if (lines.length) process.stderr.write(`  ${name} error.log (${lines.length} errors):\n    ${lines.slice(0, 5).join('\n    ')}\n`);
  } catch {
    /* no log */
  }
}

async function startNginx(name, prefix, conf, ports, cpu) {
  mkdirSync(prefix, { recursive: true });
  const file = join(prefix, 'nginx.conf');
  writeFileSync(file, conf);
  const handle = startProcess(
    name,
    NGINX,
    ['-p', prefix, '-e', join(prefix, 'error.log'), '-c', file, '-g', 'daemon off; master_process on;'],
    { cpu },
  );
  for (const port of ports) await waitForPort(port, { handle });
  return handle;
}

/**
 * nginx with 1 worker serving /small (100 bytes) and /1m (1 MiB file; also as /1m-uncorked), HTTP/1.1 and h2c ports,
 * and a TLS port (h2 and HTTP/1.1 by ALPN) with `tls` ({ cert, key }).
 */
export async function startUpstream(workDir, tls) {
  const prefix = join(workDir, 'nginx-upstream');
  mkdirSync(join(prefix, 'www'), { recursive: true });
  // Random bytes, as a real file's are (a file of one repeated byte is 256 identical pages).
  writeFileSync(join(prefix, 'www', '1m'), randomBytes(LARGE_BYTES));
  const port = await freePort();
  const h2cPort = await freePort();
  const tlsPort = await freePort();
  // /1m as a static-file server is usually set up: sendfile, and tcp_nopush (TCP_CORK: the head
  // and the file's first bytes in one full segment). /1m-uncorked is the same file without
  // tcp_nopush, to show what corking does to a proxied download (bench/MEASUREMENTS.md).
  const www = join(prefix, 'www');
  const locations = `    location = /small { default_type text/plain; return 200 "${SMALL_BODY.slice(0, -1)}\\n"; }
    location = /1m { root ${www}; default_type application/octet-stream; sendfile on; tcp_nopush on; }
    location = /1m-uncorked { alias ${join(www, '1m')}; default_type application/octet-stream; sendfile on; tcp_nopush off; }`;
  const conf = nginxMain(
    prefix,
    `  server {
    listen 127.0.0.1:${port} backlog=4096;
    listen 127.0.0.1:${h2cPort} http2 backlog=4096;
${locations}
  }
  server {
${nginxTls(tlsPort, tls)}
${locations}
  }`,
    4096,
  );
  const handle = await startNginx('nginx-upstream', prefix, conf, [port, h2cPort, tlsPort], LOAD_CPU);
  return { handle, port, h2cPort, tlsPort };
}

/** nginx as the reverse proxy: routes X-Cmux-Port-Internal to the matching upstream group. */
async function startNginxProxy(workDir, backends, tls) {
  const prefix = join(workDir, `nginx-proxy-${Date.now()}`);
  const port = await freePort();
  const h2cPort = await freePort();
  const tlsPort = await freePort();
  const groups = Object.entries(backends)
    .map(([name, p]) => `  upstream ${name} { server 127.0.0.1:${p}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 60s; }`)
    .join('\n');
  const routes = Object.entries(backends)
    .map(([name, p]) => `    "${p}" ${name};`)
    .join('\n');
  const conf = nginxMain(
    prefix,
    `${groups}
  map $http_x_cmux_port_internal $cmux_backend {
    default ${Object.keys(backends)[0]};
${routes}
  }
  map $http_upgrade $connection_upgrade { default upgrade; "" ""; }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    listen 127.0.0.1:${h2cPort} http2 backlog=4096;
${nginxTls(tlsPort, tls)}
    client_max_body_size 0;
    location / {
      proxy_pass http://$cmux_backend;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
    }
  }`,
    // ~9,500 WebSockets hold 19,000 connections; nginx starts closing "reusable" connections (even
    // fresh ones waiting for their request) once fewer than 1/16 of worker_connections are free.
    24000,
  );
  const handle = await startNginx('nginx-proxy', prefix, conf, [port, h2cPort, tlsPort], PROXY_CPU);
  const cleanup = () => {
    reportNginxErrors('nginx-proxy', prefix);
    rmSync(prefix, { recursive: true, force: true });
  };
  return { handle, port, h2cPort, tlsPort, cleanup };
}

// ---- Node backends ----------------------------------------------------------------------------

async function startNodeServer(name, script, { cpu, nofile } = {}) {
  const port = await freePort();
  const handle = startProcess(name, process.execPath, [script, '--port', String(port)], { cpu, nofile });
  await waitForPort(port, { handle });
  return { handle, port };
}

/** Starts the three backends; all run on the load generator's CPU. */
export async function startBackends(workDir) {
  const tls = makeCertificate(workDir);
  const [upstream, sink, echo] = await Promise.all([
    startUpstream(workDir, tls),
    startNodeServer('upload-sink', paths.uploadSink, { cpu: LOAD_CPU }),
    startNodeServer('ws-echo', paths.wsEcho, { cpu: LOAD_CPU, nofile: NOFILE }),
  ]);
  return { upstream, sink, echo, tls };
}

// ---- systems under test -----------------------------------------------------------------------

const nodeEnv = () => {
  const env = { ...process.env, NODE_PATH: join(repoRoot, 'node_modules') };
  delete env.NODE_OPTIONS;
  return env;
};

/** System names, in table order. */
export const SYSTEM_NAMES = ['direct', 'cmux-proxy', 'cmux-proxy-ref', 'cmux-proxy-observed', 'cmux-proxy-workers4', 'cmux-proxy-workers4-young2', 'cmux-proxy-single', 'baseline', 'baseline-ka', 'nginx', 'http2-proxy', 'fastify', 'http-proxy-3', 'node-splice', 'bare-node'];

/** Workers of the `cmux-proxy-workers4` system. */
export const WS_WORKERS = 4;

export function cmuxAvailable() {
  return existsSync(paths.cli);
}

/**
 * Another build of the CLI measured beside this one as `cmux-proxy-ref` (run.mjs --ref-cli FILE,
 * e.g. main's dist/cmux-proxy.js), with the same flags: a before/after comparison in one run.
 */
export const refCli = { file: null };

/**
 * Starts a system under test pinned to the proxy CPU. Returns { name, handle|null, port, h2cPort,
 * stop() }. `nginxRoutes` ({ upstreamGroupName: port }) are the backends nginx can route to.
 */
export async function startSystem(name, { workDir, nginxRoutes, backends }) {
  const nodeSystem = async (args, { cpu = PROXY_CPU } = {}) => {
    const port = await freePort();
    const handle = startProcess(name, process.execPath, args(port), {
      cpu,
      nofile: NOFILE,
      env: nodeEnv(),
      cwd: repoRoot,
    });
    await waitForPort(port, { handle });
    // TLS, when on, is sniffed on the same port
    return { name, handle, port, h2cPort: port, tlsPort: port, stop: () => stopProcess(handle) };
  };
  switch (name) {
    case 'direct':
      return { name, handle: null, port: null, h2cPort: null, tlsPort: null, stop: async () => {} };
    case 'cmux-proxy':
    case 'cmux-proxy-ref':
      // TLS on (the benchmark's certificate): the cleartext rows are sniffed apart from it
      return nodeSystem((port) => [
        name === 'cmux-proxy' ? paths.cli : refCli.file,
        '--port', String(port),
        '--host', '127.0.0.1',
        '--log-level', 'warn',
        '--max-connections', String(NOFILE),
        '--max-sockets-per-upstream', String(NOFILE),
        '--tls-cert', backends.tls.cert,
        '--tls-key', backends.tls.key,
      ]);
    case 'cmux-proxy-observed': {
      // The same CLI with the access log (a file) and the admin listener (metrics) on.
      const adminPort = await freePort();
      return nodeSystem((port) => [
        paths.cli,
        '--port', String(port),
        '--host', '127.0.0.1',
        '--log-level', 'warn',
        '--max-connections', String(NOFILE),
        '--access-log', join(workDir, `access-${port}.log`),
        '--admin-port', String(adminPort),
      ]);
    }
    case 'cmux-proxy-workers4':
    case 'cmux-proxy-workers4-young2':
    case 'cmux-proxy-single': {
      // The CLI as one process or with --workers, on every CPU (not pinned), with the admin
      // listener for the per-worker figures; its info lines say how the cluster spreads connections.
      const adminPort = await freePort();
      const workers = name === 'cmux-proxy-single' ? [] : ['--workers', String(WS_WORKERS)];
      // young2: node's --max-semi-space-size=2 (MiB), which the workers inherit with execArgv
      const nodeFlags = name === 'cmux-proxy-workers4-young2' ? ['--max-semi-space-size=2'] : [];
      const system = await nodeSystem(
        (port) => [
          ...nodeFlags,
          paths.cli,
          '--port', String(port),
          '--host', '127.0.0.1',
          '--log-level', 'info',
          '--max-connections', String(NOFILE),
          // every WebSocket holds a slot to its upstream until it closes (default 1024 per upstream)
          '--max-sockets-per-upstream', String(NOFILE),
          '--admin-port', String(adminPort),
          ...workers,
        ],
        { cpu: `0-${cpus().length - 1}` },
      );
      await waitForPort(adminPort, { handle: system.handle });
      // with workers, the port answers once the first one listens: wait for all of them
      const deadline = Date.now() + 30000;
      while (workers.length && !/cluster: \d+ worker/.test(system.handle.stdout + system.handle.stderr)) {
        if (system.handle.hasExited() || Date.now() > deadline) {
          await system.stop();
          throw new Error(`${name}: the workers did not all listen within 30 s:\n${system.handle.output()}`);
        }
        await sleep(50);
      }
      const scheduling = / \((reusePort|round-robin)[^)]*\)/.exec(system.handle.stdout + system.handle.stderr)?.[1] ?? null;
      return { ...system, adminPort, workers: workers.length ? WS_WORKERS : 1, scheduling };
    }
    case 'baseline':
    case 'baseline-ka': {
      const extra = name === 'baseline-ka' ? ['--keep-alive'] : [];
      return nodeSystem((port) => [paths.baseline, '--port', String(port), ...extra]);
    }
    case 'http2-proxy':
      return nodeSystem((port) => [paths.http2Proxy, '--port', String(port)]);
    case 'http-proxy-3':
      return nodeSystem((port) => [paths.httpProxy3, '--port', String(port)]);
    case 'node-splice':
      // no routing: every connection goes to the HTTP/1.1 upstream the small-response loads use
      return nodeSystem((port) => [paths.nodeSplice, '--port', String(port), '--target-port', String(backends.upstream.port)]);
    case 'fastify': {
      // HTTP/1.1 + WebSocket and h2c on two listeners of one process
      const h2cPort = await freePort();
      const system = await nodeSystem((port) => [paths.fastify, '--port', String(port), '--h2c-port', String(h2cPort)]);
      try {
        await waitForPort(h2cPort, { handle: system.handle });
      } catch (err) {
        await system.stop();
        throw err;
      }
      return { ...system, h2cPort, tlsPort: null };
    }
    case 'nginx': {
      const n = await startNginxProxy(workDir, nginxRoutes, backends.tls);
      return {
        name,
        handle: n.handle,
        port: n.port,
        h2cPort: n.h2cPort,
        tlsPort: n.tlsPort,
        stop: async () => {
          await stopProcess(n.handle);
          n.cleanup();
        },
      };
    }
    case 'bare-node': {
      const handle = startProcess(name, process.execPath, ['-e', 'setInterval(()=>{},1e6)'], { cpu: PROXY_CPU });
      await sleep(200);
      if (handle.hasExited()) throw new Error(`bare node exited: ${handle.output()}`);
      return { name, handle, port: null, h2cPort: null, stop: () => stopProcess(handle) };
    }
    default:
      throw new Error(`unknown system ${name}`);
  }
}

/**
 * Where a client sends a request for `backendPort` through `system`: { port, targetPort }, the
 * port to connect to and the X-Cmux-Port-Internal value. Direct goes straight to the backend (the
 * header is sent anyway and ignored). For h2c, direct and nginx use their h2c listeners and the
 * proxies forward to the HTTP/1.1 backend port. With `tls`, each system's TLS port (direct: pass
 * the backend's TLS port as directPort); the proxies still forward to the cleartext backend.
 */
export function endpoint(system, backendPort, { h2c = false, tls = false, directPort } = {}) {
  if (system.name === 'direct') return { port: directPort ?? backendPort, targetPort: backendPort };
  return { port: tls ? system.tlsPort : h2c ? system.h2cPort : system.port, targetPort: backendPort };
}
