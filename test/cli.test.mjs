// The CLI with real clients (curl over HTTP/1.1 and h2c prior knowledge).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import tls from 'node:tls';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { rawRequest, request, sleep, startUpstream } from './helpers/servers.mjs';
import { CLI, startCli, runCli, stopCli } from './helpers/cli.mjs';

const exec = promisify(execFile);
const GEN_CERT = fileURLToPath(new URL('../scripts/gen-dev-cert.sh', import.meta.url));

describe('cmux-proxy CLI', () => {
  let up;
  before(async () => {
    up = await startUpstream();
  });
  after(() => up.close());

  it('serves curl --http1.1 and --http2-prior-knowledge on one port, then stops on SIGTERM with exit 0', async () => {
    const { child, port, stderr } = await startCli(['--port', '0', '--log-level', 'info']);
    try {
      assert.equal(stderr().trim().split('\n').length, 1, 'one line when listening');
      const h1 = await exec('curl', ['-sS', '--http1.1', '-w', '\n%{http_version}', '-H', `X-Cmux-Port-Internal: ${up.port}`, `http://127.0.0.1:${port}/via-curl`]);
      const [body1, version1] = h1.stdout.split('\n');
      assert.equal(version1, '1.1');
      assert.equal(JSON.parse(body1).url, '/via-curl');
      const h2 = await exec('curl', ['-sS', '--http2-prior-knowledge', '-w', '\n%{http_version}', '-H', `X-Cmux-Port-Internal: ${up.port}`, '--data-binary', 'h2 body', `http://127.0.0.1:${port}/h2`]);
      const [body2, version2] = h2.stdout.split('\n');
      assert.equal(version2, '2');
      const seen = JSON.parse(body2);
      assert.equal(seen.method, 'POST');
      assert.equal(seen.body, 'h2 body');
      assert.match(seen.headers.via, /^2 cmux-proxy-/);
    } finally {
      const { code } = await stopCli(child, 'SIGTERM');
      assert.equal(code, 0);
    }
  });

  it('stops gracefully on SIGINT with exit 0', async () => {
    const { child } = await startCli(['--port', '0']);
    const { code } = await stopCli(child, 'SIGINT');
    assert.equal(code, 0);
  });

  it('reads options from CMUX_PROXY_* environment variables', async () => {
    const { child, port } = await startCli([], { env: { CMUX_PROXY_PORT: '0', CMUX_PROXY_NO_HEADER_ROUTING: '1' } });
    try {
      const res = await exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-H', `X-Cmux-Port-Internal: ${up.port}`, `http://127.0.0.1:${port}/`]);
      assert.equal(res.stdout, '400', 'header routing is off');
    } finally {
      await stopCli(child);
    }
  });

  it('exits non-zero with a one-line error on a bad flag, a bad value, or a taken port', async () => {
    const unknown = await runCli(['--bogus']);
    assert.equal(unknown.code, 2);
    assert.equal(unknown.stderr.trim().split('\n').length, 1);
    assert.match(unknown.stderr, /bogus/);
    const badValue = await runCli(['--port', 'eighty']);
    assert.equal(badValue.code, 2);
    assert.match(badValue.stderr, /--port/);
    const badRange = await runCli(['--port', '70000']);
    assert.equal(badRange.code, 2, 'a value out of range is a bad command line too');
    assert.match(badRange.stderr, /--port 70000: expected an integer from 0 to 65535/);
    assert.equal(badRange.stderr.trim().split('\n').length, 1);
    const taken = await runCli(['--port', String(up.port)]);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /address already in use/);
    assert.equal(taken.stderr.trim().split('\n').length, 1);
  });

  it('prints --help with every flag and its environment variable', async () => {
    const help = await runCli(['--help']);
    assert.equal(help.code, 0);
    for (const flag of ['--port', '--host', '--no-http2', '--no-websockets', '--max-connections', '--idle-timeout-ms', '--keepalive-ms', '--no-header-routing', '--no-workspace-isolation', '--log-level']) {
      assert.ok(help.stdout.includes(flag), flag);
    }
    assert.ok(help.stdout.includes('CMUX_PROXY_MAX_CONNECTIONS'));
  });
});

/** Writes `value` as JSON into a fresh temporary file; returns its path. */
function writeJson(dir, name, value) {
  const file = join(dir, name);
  writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
  return file;
}

function oneLine(result) {
  const lines = result.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line, got ${JSON.stringify(result.stderr)}`);
  return lines[0];
}

/** Counts the TCP connections an upstream accepts. */
function countConnections(up) {
  const counter = { n: 0 };
  up.server.on('connection', () => counter.n++);
  return counter;
}

describe('CLI exit codes: 2 for what the user wrote, 1 for failures to start', () => {
  let dir;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-cli-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('--port -1 is one line naming --port -1, exit 2 (not parseArgs\' three lines)', async () => {
    for (const args of [['--port', '-1'], ['--port=-1']]) {
      const r = await runCli(args);
      assert.equal(r.code, 2, args.join(' '));
      assert.equal(oneLine(r), 'cmux-proxy: --port -1: expected an integer from 0 to 65535 (see --help)');
    }
  });

  it('a bad value from an environment variable names the variable, exit 2', async () => {
    const port = await runCli([], { env: { CMUX_PROXY_PORT: '-1' } });
    assert.equal(port.code, 2);
    assert.match(oneLine(port), /^cmux-proxy: CMUX_PROXY_PORT=-1: expected an integer from 0 to 65535/);
    const word = await runCli([], { env: { CMUX_PROXY_MAX_CONNECTIONS: 'many' } });
    assert.equal(word.code, 2);
    assert.match(oneLine(word), /CMUX_PROXY_MAX_CONNECTIONS=many: expected an integer/);
    const log = await runCli([], { env: { CMUX_PROXY_LOG: 'loud' } });
    assert.equal(log.code, 2);
    assert.match(oneLine(log), /CMUX_PROXY_LOG=loud: expected silent, error, warn, info or debug/);
    const bool = await runCli([], { env: { CMUX_PROXY_NO_HTTP2: 'maybe' } });
    assert.equal(bool.code, 2);
    assert.match(oneLine(bool), /CMUX_PROXY_NO_HTTP2=maybe/);
  });

  it('unknown flags, missing values, stray arguments and flags given a value: exit 2, one line', async () => {
    const cases = [
      [['--bogus'], /unknown option --bogus/],
      [['--port'], /--port needs a value/],
      [['--port', '--host', '127.0.0.1'], /--port needs a value/],
      [['stray'], /unexpected argument "stray"/],
      [['--no-http2=yes'], /--no-http2 takes no value/],
      [['--upstream-protocol', 'http3'], /--upstream-protocol http3: expected "http1", "h2c" or "auto"/],
      [['--max-sockets-per-upstream', '4', '--max-idle-sockets-per-upstream', '5'], /--max-idle-sockets-per-upstream 5: expected an integer from 0 to 4/],
      [['--tls-cert', 'a.pem'], /--tls-cert a.pem needs --tls-key too/],
      [['--fallback-port', '3000', '--fallback-socket', '/tmp/x.sock'], /--fallback-port 3000 and --fallback-socket \/tmp\/x.sock exclude each other/],
    ];
    for (const [args, pattern] of cases) {
      const r = await runCli(args);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(oneLine(r), pattern, args.join(' '));
    }
  });

  it('a taken port and an unreadable certificate are failures to start: exit 1, one line', async () => {
    const taken = await new Promise((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => resolve(s));
    });
    try {
      const r = await runCli(['--port', String(taken.address().port)]);
      assert.equal(r.code, 1);
      assert.match(oneLine(r), /address already in use/);
    } finally {
      taken.close();
    }
    const missing = join(dir, 'missing.pem');
    const r = await runCli(['--port', '0', '--tls-cert', missing, '--tls-key', missing]);
    assert.equal(r.code, 1);
    assert.equal(oneLine(r), `cmux-proxy: cannot read TLS certificate file ${missing} (ENOENT: no such file or directory)`);
  });
});

describe('CLI precedence: flags > environment > config file > defaults', () => {
  let up;
  let dir;
  before(async () => {
    up = await startUpstream();
    dir = mkdtempSync(join(tmpdir(), 'cmux-cli-'));
  });
  after(async () => {
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a flag wins over its environment variable, and the variable over the config file', async () => {
    // CMUX_PROXY_PORT names a taken port: starting at all shows --port 0 won.
    const { child } = await startCli(['--port', '0'], { env: { CMUX_PROXY_PORT: String(up.port) } });
    await stopCli(child);
    const config = writeJson(dir, 'port.json', { listenPort: up.port });
    const fromEnv = await startCli(['--config', config], { env: { CMUX_PROXY_PORT: '0' } });
    await stopCli(fromEnv.child);
    const fromFile = await runCli(['--config', config]);
    assert.equal(fromFile.code, 1, 'the config file\'s port is used when nothing overrides it');
    assert.match(fromFile.stderr, new RegExp(`127\\.0\\.0\\.1:${up.port}: address already in use`));
  });

  it('CMUX_PROXY_NO_<X>=0 turns an option back on over the config file; the --no-<x> flag turns it off over both', async () => {
    const config = writeJson(dir, 'routing.json', { headerRoutingEnabled: false });
    const status = async (args, env) => {
      const { child, port } = await startCli(['--port', '0', '--config', config, ...args], { env });
      try {
        return (await exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-H', `X-Cmux-Port-Internal: ${up.port}`, `http://127.0.0.1:${port}/`])).stdout;
      } finally {
        await stopCli(child);
      }
    };
    assert.equal(await status([], {}), '400', 'the file turns header routing off');
    assert.equal(await status([], { CMUX_PROXY_NO_HEADER_ROUTING: '0' }), '200', 'the variable wins over the file');
    assert.equal(await status(['--no-header-routing'], { CMUX_PROXY_NO_HEADER_ROUTING: '0' }), '400', 'the flag wins over the variable');
  });

  /** Starts the CLI, sends one unrouted request, stops; returns the debug lines it logged. */
  async function debugLines(args, env) {
    const { child, port, stderr } = await startCli(args, { env });
    try {
      const res = await exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${port}/unrouted`]);
      assert.equal(res.stdout, '400');
      await sleep(200);
    } finally {
      await stopCli(child);
    }
    return stderr().split('\n').filter((l) => l.startsWith('cmux-proxy debug:'));
  }

  it('CMUX_PROXY_LOG raises the level, but --log-level wins over it; CMUX_PROXY_LOG wins over the config file', async () => {
    assert.ok((await debugLines(['--port', '0'], { CMUX_PROXY_LOG: 'debug' })).length > 0, 'CMUX_PROXY_LOG=debug alone logs debug lines');
    assert.deepEqual(await debugLines(['--port', '0', '--log-level', 'info'], { CMUX_PROXY_LOG: 'debug' }), [], '--log-level info wins');
    assert.deepEqual(await debugLines(['--port', '0'], { CMUX_PROXY_LOG: 'debug', CMUX_PROXY_LOG_LEVEL: 'info' }), [], 'CMUX_PROXY_LOG_LEVEL before CMUX_PROXY_LOG');
    const config = writeJson(dir, 'log.json', { logLevel: 'info' });
    assert.ok((await debugLines(['--port', '0', '--config', config], { CMUX_PROXY_LOG: 'debug' })).length > 0, 'the variable wins over the file');
  });
});

describe('CLI --version', () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

  it('prints the package.json version from the bundle', async () => {
    const r = await runCli(['--version']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, `cmux-proxy ${pkg.version}\n`);
  });

  it('prints it from an installed package layout, run through the node_modules/.bin link', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmux-cli-install-'));
    try {
      const pkgDir = join(dir, 'node_modules', 'cmux-proxy');
      mkdirSync(join(pkgDir, 'dist'), { recursive: true });
      writeFileSync(join(pkgDir, 'package.json'), JSON.stringify({ ...pkg, version: '9.8.7-test' }));
      copyFileSync(CLI, join(pkgDir, 'dist', 'cmux-proxy.js'));
      // The bundle keeps its npm dependencies external, as an install provides them.
      symlinkSync(fileURLToPath(new URL('../node_modules/lru-cache', import.meta.url)), join(dir, 'node_modules', 'lru-cache'));
      mkdirSync(join(dir, 'node_modules', '.bin'));
      symlinkSync('../cmux-proxy/dist/cmux-proxy.js', join(dir, 'node_modules', '.bin', 'cmux-proxy'));
      const r = await exec(process.execPath, [join(dir, 'node_modules', '.bin', 'cmux-proxy'), '--version'], { cwd: dir });
      assert.equal(r.stdout, 'cmux-proxy 9.8.7-test\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('CLI flags for every option', () => {
  let up;
  before(async () => {
    up = await startUpstream();
  });
  after(() => up.close());

  it('--max-queued-connections 0 answers 503 at once past --max-connections', async () => {
    const { child, port } = await startCli(['--port', '0', '--max-connections', '1', '--max-queued-connections', '0']);
    const holder = net.connect(port, '127.0.0.1');
    try {
      await once(holder, 'connect');
      await sleep(200); // accepted and served: the one slot is taken
      const answer = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', { timeoutMs: 5000 });
      assert.match(answer, /^HTTP\/1\.1 503 /, 'refused at once, not queued for connectionQueueTimeoutMs (10 s)');
    } finally {
      holder.destroy();
      await stopCli(child);
    }
  });

  /** Sends `n` sequential keep-alive requests through the CLI started with `args`; returns upstream connections. */
  async function connectionsFor(args, n = 2, gapMs = 0) {
    const counter = countConnections(up);
    const { child, port } = await startCli(['--port', '0', ...args]);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let i = 0; i < n; i++) {
        const res = await request(`http://127.0.0.1:${port}/${i}`, { agent, headers: { 'x-cmux-port-internal': String(up.port) } });
        assert.equal(res.status, 200);
        if (gapMs > 0) await sleep(gapMs);
      }
    } finally {
      agent.destroy();
      await stopCli(child);
    }
    return counter.n;
  }

  it('--max-idle-sockets-per-upstream 0 keeps no upstream socket for reuse', async () => {
    assert.equal(await connectionsFor([]), 1, 'by default the second request reuses the first socket');
    assert.equal(await connectionsFor(['--max-idle-sockets-per-upstream', '0']), 2);
  });

  it('--upstream-protocol-cache-ttl-ms sets how long auto remembers an upstream (1 ms: probed again)', async () => {
    // Each probe is one more TCP connection (the h2c preface, refused by this HTTP/1.1 upstream).
    assert.equal(await connectionsFor(['--upstream-protocol', 'auto'], 2, 50), 2, 'probe + one pooled socket');
    assert.ok((await connectionsFor(['--upstream-protocol', 'auto', '--upstream-protocol-cache-ttl-ms', '1'], 2, 50)) >= 3, 'probed again before the second request');
  });

  it('--max-sessions-per-upstream caps the HTTP/2 sessions to an h2c upstream', async () => {
    const sessions = { n: 0 };
    const h2up = http2.createServer({ settings: { maxConcurrentStreams: 1 } });
    h2up.on('session', () => sessions.n++);
    h2up.on('stream', (stream) => setTimeout(() => stream.respond({ ':status': 200 }) || stream.end('ok'), 100));
    await new Promise((r) => h2up.listen(0, '127.0.0.1', r));
    const upPort = h2up.address().port;
    const run = async (args) => {
      sessions.n = 0;
      const { child, port } = await startCli(['--port', '0', '--upstream-protocol', 'h2c', ...args]);
      try {
        const results = await Promise.all(
          [0, 1, 2, 3].map((i) => request(`http://127.0.0.1:${port}/${i}`, { headers: { 'x-cmux-port-internal': String(upPort) } })),
        );
        assert.deepEqual(results.map((r) => r.status), [200, 200, 200, 200]);
      } finally {
        await stopCli(child);
      }
      return sessions.n;
    };
    try {
      assert.equal(await run(['--max-sessions-per-upstream', '1']), 1);
      assert.ok((await run(['--max-sessions-per-upstream', '4'])) > 1, 'more sessions when allowed');
    } finally {
      h2up.close();
    }
  });
});

describe('CLI --config <file.json>', () => {
  let dir;
  let up;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-cli-config-'));
    up = await startUpstream();
  });
  after(async () => {
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes the API option names, including TLS sni that no flag can express; flags override its values', async () => {
    const gen = (name, ...names) => {
      execFileSync('bash', [GEN_CERT, '--out', dir, '--name', name, ...names], { stdio: 'ignore' });
      return { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}-key.pem`) };
    };
    const main = gen('main');
    const other = gen('other', 'other.test');
    const config = writeJson(dir, 'proxy.json', { listenPort: 9, headerRoutingEnabled: false, tls: { ...main, sni: { 'other.test': other } } });
    // --port overrides listenPort; the file's headerRoutingEnabled: false stays.
    const { child, port, stderr } = await startCli(['--config', config, '--port', '0']);
    try {
      assert.match(stderr(), /TLS\)/);
      const status = await exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-H', `X-Cmux-Port-Internal: ${up.port}`, `http://127.0.0.1:${port}/`]);
      assert.equal(status.stdout, '400', 'header routing is off, as the file says');
      const peer = (servername) =>
        new Promise((resolve, reject) => {
          const socket = tls.connect({ port, host: '127.0.0.1', servername, rejectUnauthorized: false }, () => {
            resolve(socket.getPeerCertificate().subject.CN);
            socket.end();
          });
          socket.on('error', reject);
        });
      assert.equal(await peer('other.test'), 'other', 'the sni entry from the file');
      assert.equal(await peer('localhost'), 'main');
    } finally {
      await stopCli(child);
    }
  });

  it('names the file and the JSON path of every bad entry (the API\'s own checks), exit 2', async () => {
    const cases = [
      [{ tls: { certFile: 'a.pem', keyFile: 'a-key.pem', sni: { 'a.test': { cert: 'b.pem' } } } }, 'tls.sni["a.test"].cert: unknown option'],
      [{ tls: { certFile: 'a.pem', keyFile: 'a-key.pem', sni: { 'a.test': { certFile: 'b.pem', keyFile: 7 } } } }, 'tls.sni["a.test"].keyFile: 7 (expected a file path)'],
      [{ maxConnections: 0 }, 'maxConnections: 0 (expected an integer from 1 to 10000000)'],
      [{ listenPort: '9776' }, 'listenPort: "9776" (expected an integer from 0 to 65535)'],
      [{ fallback: { port: 3000, hots: 'x' } }, 'fallback.hots: unknown option'],
      [{ bogus: true }, 'bogus: unknown option'],
    ];
    for (const [value, message] of cases) {
      const file = writeJson(dir, 'bad.json', value);
      const r = await runCli(['--config', file]);
      assert.equal(r.code, 2, message);
      assert.equal(oneLine(r), `cmux-proxy: ${file}: ${message}`);
    }
  });

  it('a config file that is missing, not JSON or not an object: exit 2 naming the file (and where the JSON breaks)', async () => {
    const missing = join(dir, 'missing.json');
    const r1 = await runCli(['--config', missing]);
    assert.equal(r1.code, 2);
    assert.equal(oneLine(r1), `cmux-proxy: ${missing}: cannot read the config file (ENOENT: no such file or directory)`);
    const broken = writeJson(dir, 'broken.json', '{\n  "listenPort": 0,\n}\n');
    const r2 = await runCli(['--config', broken]);
    assert.equal(r2.code, 2);
    assert.match(oneLine(r2), new RegExp(`^cmux-proxy: ${broken}: invalid JSON: .* at line 3, column 1$`));
    const array = writeJson(dir, 'array.json', [1]);
    const r3 = await runCli(['--config', array]);
    assert.equal(r3.code, 2);
    assert.equal(oneLine(r3), `cmux-proxy: ${array}: expected a JSON object of options, got [1]`);
    const fromEnv = await runCli([], { env: { CMUX_PROXY_CONFIG: missing } });
    assert.equal(fromEnv.code, 2, 'CMUX_PROXY_CONFIG names the file too');
    assert.match(fromEnv.stderr, /missing\.json: cannot read the config file/);
  });

  it('a bad value from a flag is blamed on the flag even when the file sets the same option', async () => {
    const file = writeJson(dir, 'ok.json', { maxConnections: 5 });
    const r = await runCli(['--config', file, '--max-connections', '0']);
    assert.equal(r.code, 2);
    assert.match(oneLine(r), /--max-connections 0: expected an integer from 1/);
  });
});

describe('CLI --help', () => {
  it('lists every flag in aligned columns, with its environment variable and option name', async () => {
    const { stdout, code } = await runCli(['--help']);
    assert.equal(code, 0);
    const lines = stdout.split('\n');
    const first = lines.findIndex((l) => l.startsWith('  --'));
    assert.ok(first > 0);
    const flagLines = lines.slice(first).filter((l) => l.startsWith('  --'));
    const column = /^  (\S.*?\S)\s{2,}\S/.exec(flagLines[0])[0].length - 1;
    for (const line of lines.slice(first)) {
      if (line === '') continue;
      // Flag lines: the description starts at `column`; the lines below them: indented to it.
      const start = line.startsWith('  --') ? /^  (\S.*?\S)\s{2,}\S/.exec(line)?.[0].length - 1 : /^ */.exec(line)[0].length;
      assert.equal(start, column, `aligned: ${JSON.stringify(line)}`);
    }
    // Every option that a command line can hold has a flag (functions and objects aside).
    const { resolveOptions } = await import('../dist/options.js');
    const notFlags = new Set(['fallback', 'containerPortResolver', 'logger', 'tls', 'routes', 'rateLimit']);
    for (const option of Object.keys(resolveOptions({ listenPort: 0 }))) {
      if (notFlags.has(option)) continue;
      assert.match(stdout, new RegExp(`option ${option}\\b`), `${option} has a flag (add it to FLAGS in src/cli.ts)`);
    }
    for (const option of ['fallback.port', 'fallback.socketPath', 'tls.certFile', 'tls.keyFile']) assert.ok(stdout.includes(`option ${option}`), option);
    // The README's CLI section lists each of them.
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const cliSection = readme.slice(readme.indexOf('## CLI'), readme.indexOf('\n## ', readme.indexOf('## CLI') + 1));
    for (const m of stdout.matchAll(/^ {2}(--[a-z0-9-]+)/gm)) assert.ok(cliSection.includes(`\`${m[1]}`), `README lists ${m[1]}`);
  });
});

describe('README "Try it" claims', () => {
  it('from Node, *.localhost routes work with a loopback lookup or a Host header; a workspace whose server binds 127.0.0.1 only gets 502 ECONNREFUSED', async () => {
    const up = await startUpstream();
    const { child, port } = await startCli(['--port', '0']);
    try {
      const get = (url, options) =>
        new Promise((resolve, reject) => {
          http.get(url, options, (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode, body }));
          }).on('error', reject);
        });
      const lookup = (name, opts, cb) => (opts.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4));
      const viaLookup = await get(`http://app.${up.port}.localhost:${port}/lookup`, { lookup });
      assert.equal(viaLookup.status, 200);
      assert.equal(JSON.parse(viaLookup.body).url, '/lookup');
      const viaHost = await get(`http://127.0.0.1:${port}/host`, { headers: { host: `app.${up.port}.localhost` } });
      assert.equal(JSON.parse(viaHost.body).url, '/host');
      const workspace = await get(`http://127.0.0.1:${port}/`, { headers: { host: `workspace-1-${up.port}.localhost` } });
      assert.equal(workspace.status, 502);
      assert.equal(workspace.body, 'upstream request error: ECONNREFUSED');
    } finally {
      await stopCli(child);
      await up.close();
    }
  });
});
