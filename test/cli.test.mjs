// The CLI with real clients (curl over HTTP/1.1 and h2c prior knowledge).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startUpstream } from './helpers/servers.mjs';
import { startCli, runCli, stopCli } from './helpers/cli.mjs';

const exec = promisify(execFile);

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
    assert.equal(badRange.code, 1);
    assert.match(badRange.stderr, /listenPort/);
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
