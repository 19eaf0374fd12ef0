// The package as a user gets it: the repository's files (no dist/) are packed with `npm pack`,
// which builds through the `prepare` script; the tarball is installed into a fresh project, which
// imports it, proxies a request, type-checks a strict TypeScript file against its types (with the
// repository's TypeScript and @types/node) and runs its `cmux-proxy` bin. And `npm install
// git+file://<this repository>#<HEAD>` builds and installs the same package.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const repo = fileURLToPath(new URL('..', import.meta.url));
const TSC = join(repo, 'node_modules/typescript/bin/tsc');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/**
 * The environment for a child npm: without the npm_* variables of an enclosing `npm test`
 * (npm_config_local_prefix would point the child at this repository), but with its cache.
 */
function npmEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.toLowerCase().startsWith('npm_') || /^npm_config_(cache|registry|userconfig)$/i.test(k)) env[k] = v;
  }
  return env;
}

async function npm(args, cwd) {
  try {
    return await run(NPM, args, { cwd, env: npmEnv(), maxBuffer: 16 * 1024 * 1024, timeout: 120_000 });
  } catch (err) {
    throw new Error(`npm ${args.join(' ')} failed in ${cwd}:\n${err.stdout}\n${err.stderr}`);
  }
}

/** Every file of the package, relative to its root. */
function listFiles(root, dir = root) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listFiles(root, path));
    else out.push(relative(root, path));
  }
  return out;
}

const USE_TS = `import { createProxyServer, ErrorCodes, type ProxyOptions, type ProxyStats, type ProxyAddress } from 'cmux-proxy';
import type { IncomingMessage, ServerResponse } from 'node:http';

const options: ProxyOptions = {
  listenPort: 0,
  logLevel: 'silent',
  fallback: {
    handler(req: IncomingMessage, res: ServerResponse) {
      res.end(req.url ?? '/');
    },
  },
};
const proxy = createProxyServer(options);
export async function main(): Promise<number> {
  await proxy.start();
  const address: ProxyAddress | null = proxy.address();
  const stats: ProxyStats = proxy.getStats();
  const code: string = ErrorCodes.NO_ROUTE;
  await proxy.stop();
  return (address?.port ?? 0) + stats.totalRequests + code.length + (proxy.isRunning() ? 1 : 0);
}
`;

describe('npm package', () => {
  let tmp;
  let tarball;
  let app;

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'cmux-proxy-package-'));
    // The repository's files as a clone has them (tracked and new ones, nothing ignored: no dist/).
    const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: repo, encoding: 'utf8' })
      .split('\0')
      .filter((f) => f !== '' && f !== 'node_modules' && existsSync(join(repo, f)));
    const clone = join(tmp, 'clone');
    for (const f of files) {
      mkdirSync(dirname(join(clone, f)), { recursive: true });
      cpSync(join(repo, f), join(clone, f));
    }
    assert.equal(existsSync(join(clone, 'dist')), false);
    // devDependencies, as npm installs them for a git dependency's prepare script.
    symlinkSync(join(repo, 'node_modules'), join(clone, 'node_modules'), 'dir');
    const out = join(tmp, 'out');
    mkdirSync(out);
    const { stdout } = await npm(['pack', '--pack-destination', out], clone);
    tarball = join(out, stdout.trim().split('\n').pop());
    assert.ok(existsSync(tarball), `npm pack made ${tarball}`);

    app = join(tmp, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
    await npm(['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], app);
  });

  after(() => {
    if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true });
  });

  it('holds the built code, its types, the CLI bundle, the license and the sources its maps name', () => {
    const root = join(app, 'node_modules/cmux-proxy');
    const files = new Set(listFiles(root));
    for (const f of ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts', 'dist/server.js', 'dist/cmux-proxy.js', 'src/server.ts']) {
      assert.ok(files.has(f), `${f} is in the package`);
    }
    assert.match(readFileSync(join(root, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) \d{4} cmux-proxy contributors/);
    for (const f of files) assert.ok(!/^(test|bench|scripts|\.ci)\//.test(f), `${f} is not shipped`);
    const maps = [...files].filter((f) => f.endsWith('.map'));
    assert.ok(maps.length > 20, 'source maps are shipped');
    for (const map of maps) {
      const { sources } = JSON.parse(readFileSync(join(root, map), 'utf8'));
      for (const source of sources) {
        const path = relative(root, resolve(root, dirname(map), source));
        assert.ok(files.has(path), `${map} names ${source}, which is in the package`);
      }
    }
    // The shipped lru-cache dependency resolves from the package.
    assert.ok(existsSync(join(app, 'node_modules/lru-cache/package.json')));
  });

  it('imports as cmux-proxy and proxies a request to a local upstream', async () => {
    const script = `
      import http from 'node:http';
      import { createProxyServer, ErrorCodes } from 'cmux-proxy';
      const upstream = http.createServer((req, res) => res.end('hello from ' + req.url));
      await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
      const proxy = createProxyServer({ listenPort: 0, logLevel: 'silent' });
      await proxy.start();
      const res = await fetch('http://127.0.0.1:' + proxy.address().port + '/path', {
        headers: { 'x-cmux-port-internal': String(upstream.address().port) },
      });
      const out = { status: res.status, body: await res.text(), noRoute: ErrorCodes.NO_ROUTE, running: proxy.isRunning() };
      await proxy.stop();
      upstream.close();
      process.stdout.write(JSON.stringify(out));
    `;
    writeFileSync(join(app, 'check.mjs'), script);
    const { stdout } = await run(process.execPath, ['check.mjs'], { cwd: app, timeout: 30_000 });
    const out = JSON.parse(stdout);
    assert.deepEqual(out, { status: 200, body: 'hello from /path', noRoute: out.noRoute, running: true });
    assert.equal(typeof out.noRoute, 'string');
  });

  it('type-checks a strict TypeScript file against its types (and catches a wrong one)', async () => {
    const tsconfig = {
      compilerOptions: {
        strict: true,
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        lib: ['ES2023'],
        types: ['node'],
        // The repository's pinned @types/node: the README says users need it.
        typeRoots: [join(repo, 'node_modules/@types')],
        noEmit: true,
        skipLibCheck: false,
      },
      files: ['use.ts'],
    };
    writeFileSync(join(app, 'tsconfig.json'), JSON.stringify(tsconfig));
    writeFileSync(join(app, 'use.ts'), USE_TS);
    await run(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: app, timeout: 60_000 }).catch((err) => {
      throw new Error(`tsc failed:\n${err.stdout}${err.stderr}`);
    });
    // The same check fails on a wrongly typed option, so the types are really in use.
    writeFileSync(join(app, 'use.ts'), `${USE_TS}\ncreateProxyServer({ listenPort: '9776' });\n`);
    const bad = await run(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: app, timeout: 60_000 }).then(
      () => null,
      (err) => err,
    );
    assert.ok(bad !== null, 'tsc rejects a string listenPort');
    assert.match(bad.stdout, /use\.ts\(\d+,\d+\): error TS2322: Type 'string' is not assignable to type 'number'/);
  });

  it('installs the cmux-proxy bin, which runs', async () => {
    const bin = join(app, 'node_modules/.bin/cmux-proxy');
    const { stdout } = await run(bin, ['--help'], { cwd: app, timeout: 30_000 });
    assert.match(stdout, /^Usage: cmux-proxy/);
    assert.match(stdout, /--port/);
  });
});

describe('npm install from git', () => {
  it('builds through prepare and installs a package that imports and runs', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'cmux-proxy-git-'));
    try {
      const head = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: repo, encoding: 'utf8' }).trim();
      const app = join(tmp, 'app');
      mkdirSync(app);
      writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
      await npm(['install', '--prefer-offline', '--no-audit', '--no-fund', `git+file://${repo}#${head}`], app);
      const root = join(app, 'node_modules/cmux-proxy');
      for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cmux-proxy.js', 'LICENSE']) assert.ok(existsSync(join(root, f)), `${f} was built and installed`);
      const script = `import { createProxyServer } from 'cmux-proxy';
        const proxy = createProxyServer({ listenPort: 0, logLevel: 'silent' });
        await proxy.start();
        const res = await fetch('http://127.0.0.1:' + proxy.address().port + '/');
        await proxy.stop();
        process.stdout.write(String(res.status));`;
      writeFileSync(join(app, 'check.mjs'), script);
      const { stdout } = await run(process.execPath, ['check.mjs'], { cwd: app, timeout: 30_000 });
      assert.equal(stdout, '400', 'an unrouted request gets the proxy\'s 400');
      const help = await run(join(app, 'node_modules/.bin/cmux-proxy'), ['--help'], { cwd: app, timeout: 30_000 });
      assert.match(help.stdout, /^Usage: cmux-proxy/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
