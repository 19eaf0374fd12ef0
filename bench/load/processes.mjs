// Child processes for the load benchmark: spawning (optionally pinned with taskset and with a
// raised fd limit), waiting for ports, bounded one-shot commands, and killing every child we
// started by its PID (plus whatever it forked) on stop, on error and on SIGINT/SIGTERM.
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';
import { descendants } from './measure.mjs';

/** Every process we started and have not seen exit yet: pid -> handle. */
const live = new Map();

/** Pins this process (all of its threads) to one CPU; children inherit it. */
export function pinSelf(cpu) {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(process.pid)], { stdio: 'ignore' });
}

/**
 * Builds the argv that runs `cmd args` pinned to `cpu` (taskset) with `ulimit -n nofile` raised.
 * Both taskset and bash exec the command, so the PID we get is the command's own PID.
 */
function wrap(cmd, args, { cpu, nofile }) {
  let argv = [cmd, ...args];
  if (nofile) argv = ['bash', '-c', `ulimit -n ${nofile} && exec "$0" "$@"`, ...argv];
  if (cpu !== undefined && cpu !== null) argv = ['taskset', '-c', String(cpu), ...argv];
  return argv;
}

function keepTail(handle, stream, key) {
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk) => {
    handle[key] = (handle[key] + chunk).slice(-8192);
  });
}

/**
 * Starts a long-running child. Returns a handle { name, pid, child, exited (Promise<{code,signal}>),
 * hasExited(), output() } with the last 8 KiB of stdout/stderr kept for error messages.
 */
export function startProcess(name, cmd, args, { cpu, nofile, env, cwd, stdin = 'ignore' } = {}) {
  const [file, ...argv] = wrap(cmd, args, { cpu, nofile });
  const child = spawn(file, argv, { cwd, env: env ?? process.env, stdio: [stdin, 'pipe', 'pipe'] });
  const handle = { name, pid: child.pid, child, stdout: '', stderr: '', exitInfo: null };
  if (!child.pid) throw new Error(`${name}: could not spawn ${file}`);
  keepTail(handle, child.stdout, 'stdout');
  keepTail(handle, child.stderr, 'stderr');
  handle.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      handle.exitInfo = { code, signal };
      live.delete(handle.pid);
      resolve(handle.exitInfo);
    });
    child.on('error', (err) => {
      handle.exitInfo = { code: -1, signal: null, error: err.message };
      live.delete(handle.pid);
      resolve(handle.exitInfo);
    });
  });
  handle.hasExited = () => handle.exitInfo !== null;
  handle.output = () => `${handle.stdout}${handle.stderr}`.trim().split('\n').slice(-15).join('\n');
  live.set(handle.pid, handle);
  return handle;
}

function signalPids(pids, signal) {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      /* already gone */
    }
  }
}

/** Stops a child: SIGTERM to it and its descendants, SIGKILL after graceMs. */
export async function stopProcess(handle, graceMs = 3000) {
  if (!handle || handle.hasExited()) return;
  const t0 = Date.now();
  const tree = [handle.pid, ...descendants(handle.pid)];
  signalPids(tree, 'SIGTERM');
  const timer = new Promise((resolve) => setTimeout(resolve, graceMs, 'timeout'));
  if ((await Promise.race([handle.exited, timer])) === 'timeout') {
    process.stderr.write(`  ${handle.name} (pid ${handle.pid}) ignored SIGTERM for ${graceMs} ms; SIGKILL\n`);
    signalPids([handle.pid, ...descendants(handle.pid)], 'SIGKILL');
    await Promise.race([handle.exited, new Promise((r) => setTimeout(r, 1000))]);
  } else if (Date.now() - t0 > 500) {
    process.stderr.write(`  ${handle.name} took ${Date.now() - t0} ms to stop\n`);
  }
  // nginx workers and other grandchildren may outlive their parent for a moment.
  signalPids(tree.slice(1).filter(isAlive), 'SIGKILL');
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops every child still running (in parallel). */
export async function stopAll() {
  await Promise.all([...live.values()].map((h) => stopProcess(h, 2000)));
}

/** Last resort for process 'exit': SIGKILL everything synchronously. */
export function killAllSync() {
  for (const handle of live.values()) {
    signalPids([handle.pid, ...descendants(handle.pid)], 'SIGKILL');
  }
  live.clear();
}

/**
 * Runs a command to completion with a hard timeout (the child tree is killed by PID when it
 * expires). Resolves { code, signal, stdout, stderr, timedOut, ms }; never rejects on exit codes.
 */
export async function runCommand(name, cmd, args, { timeoutMs, cpu, nofile, env, input } = {}) {
  const [file, ...argv] = wrap(cmd, args, { cpu, nofile });
  const started = process.hrtime.bigint();
  const child = spawn(file, argv, { env: env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
  if (!child.pid) {
    const err = await new Promise((resolve) => child.once('error', resolve));
    return { code: -1, signal: null, stdout: '', stderr: `${name}: ${err.message}`, timedOut: false, ms: 0 };
  }
  const handle = { name, pid: child.pid, child, exitInfo: null, hasExited: () => handle.exitInfo !== null };
  handle.exited = new Promise((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal }));
    child.on('error', (err) => resolve({ code: -1, signal: null, error: err.message }));
  });
  live.set(child.pid, handle);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c) => (stderr += c));
  if (input !== undefined) child.stdin.end(input);
  else child.stdin.end();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    signalPids([child.pid, ...descendants(child.pid)], 'SIGKILL');
  }, timeoutMs ?? 60000);
  const exitInfo = await handle.exited;
  clearTimeout(timer);
  handle.exitInfo = exitInfo;
  live.delete(child.pid);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  return { ...exitInfo, stdout, stderr, timedOut, ms };
}

const usedPorts = new Set();

/** A free loopback TCP port (never the same one twice in a run). */
export async function freePort() {
  for (let i = 0; i < 50; i++) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address();
        srv.close(() => resolve(port));
      });
    });
    if (!usedPorts.has(port)) {
      usedPorts.add(port);
      return port;
    }
  }
  throw new Error('no free port found');
}

function tryConnect(port, host) {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/** Waits until something accepts TCP connections on host:port; fails fast if `handle` exits. */
export async function waitForPort(port, { host = '127.0.0.1', timeoutMs = 10000, handle } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (handle?.hasExited()) {
      throw new Error(`${handle.name} exited (${JSON.stringify(handle.exitInfo)}) before listening on ${port}:\n${handle.output()}`);
    }
    if (await tryConnect(port, host)) return;
    await sleep(50);
  }
  throw new Error(`${handle?.name ?? 'server'} did not listen on ${host}:${port} within ${timeoutMs} ms${handle ? `:\n${handle.output()}` : ''}`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Kills every child on SIGINT/SIGTERM/uncaught errors, and SIGKILLs leftovers at exit. */
export function installCleanupHandlers(onCleanup) {
  let cleaning = false;
  const bail = async (why, code) => {
    if (cleaning) return;
    cleaning = true;
    process.stderr.write(`\nbench: ${why}; stopping ${live.size} child process(es)\n`);
    try {
      await stopAll();
      await onCleanup?.();
    } finally {
      process.exit(code);
    }
  };
  process.on('SIGINT', () => bail('SIGINT', 130));
  process.on('SIGTERM', () => bail('SIGTERM', 143));
  process.on('uncaughtException', (err) => {
    process.stderr.write(`${err.stack ?? err}\n`);
    bail('uncaught exception', 1);
  });
  process.on('unhandledRejection', (err) => {
    process.stderr.write(`${err?.stack ?? err}\n`);
    bail('unhandled rejection', 1);
  });
  process.on('exit', killAllSync);
}
