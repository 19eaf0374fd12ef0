// Many WebSockets through one proxy, more than one process can hold: the echo upstreams and the
// load generator are split over several processes (each under its fd limit: a process here may
// hold 20,000 descriptors at most, and every WebSocket costs a client process one), connections
// take their source address in turn from 127.0.0.x so that no (source, destination) address pair
// runs out of ephemeral ports, and every process is stopped by PID at the end (also on failure).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startProcess, stopProcess, waitForPort, sleep } from './processes.mjs';

const here = new URL('.', import.meta.url).pathname;

/** WebSockets one load-generator or echo process holds at most (each is one descriptor there). */
export const PER_PROCESS = 5000;
/** Source addresses each client process binds in turn: 2,500 connections per address at 5,000. */
export const SOURCES_PER_CLIENT = 2;
/** Every CPU of the machine, for taskset (the harness itself is pinned to one). */
export const ALL_CPUS = `0-${cpus().length - 1}`;

/** 127.0.0.x addresses for client process `index` (127.0.0.1 is left to the proxy's own upstream connections). */
export function sourceAddresses(index, perClient = SOURCES_PER_CLIENT) {
  return Array.from({ length: perClient }, (_, j) => `127.0.0.${2 + index * perClient + j}`);
}

/** `total` split into `parts` near-equal whole shares. */
export function split(total, parts) {
  return Array.from({ length: parts }, (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0));
}

/** The p-th percentile (0..100) of an ascending array, nearest rank; null when empty. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/** Starts `n` `ws` echo servers (bench/load/ws-echo-server.mjs), each with its own port. */
export async function startEchoServers(n, { cpu = ALL_CPUS } = {}) {
  const servers = [];
  try {
    for (let i = 0; i < n; i++) {
      const port = await freePort();
      const handle = startProcess(`ws-echo-${i + 1}`, process.execPath, [join(here, 'ws-echo-server.mjs'), '--port', String(port)], {
        cpu,
        nofile: 20000,
      });
      servers.push({ handle, port });
      await waitForPort(port, { handle });
    }
  } catch (err) {
    await Promise.all(servers.map((s) => stopProcess(s.handle, 2000)));
    throw err;
  }
  return servers;
}

async function readJsonLine(handle, index, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const lines = handle.stdout.split('\n').filter((l) => l.startsWith('{'));
    if (lines.length > index) return JSON.parse(lines[index]);
    if (handle.hasExited()) break;
    await sleep(50);
  }
  throw new Error(`${handle.name}: no result line ${index} (${handle.hasExited() ? `exited ${JSON.stringify(handle.exitInfo)}` : 'timeout'}):\n${handle.output()}`);
}

/**
 * Opens `total` WebSockets through the proxy on `proxyPort`, spread over `targetPorts` (the echo
 * servers, in turn) from ceil(total / perProcess) client processes started together, each
 * binding its own 127.0.0.x source addresses; each connection echoes one message. Resolves once
 * every client has reported, with the merged figures, and `release()` (prints how many are still
 * open, then stops the clients) when `hold`. The clients are stopped on any failure.
 */
export async function openFleet({ proxyPort, targetPorts, total, hold = true, concurrency = 200, cpu = ALL_CPUS, timeoutMs, perProcess = PER_PROCESS }) {
  const processes = Math.max(1, Math.ceil(total / perProcess));
  const dir = mkdtempSync(join(tmpdir(), 'ws-fleet-'));
  const latencyFile = (i) => join(dir, `latency-${i}.json`);
  const clients = split(total, processes).map((count, i) => {
    const args = [join(here, 'ws-client.mjs'), '--port', String(proxyPort), '--target-port', targetPorts.join(','), '--count', String(count)];
    args.push('--local-address', sourceAddresses(i).join(','), '--concurrency', String(concurrency), '--latency-file', latencyFile(i));
    if (hold) args.push('--hold');
    return startProcess(`ws-client-${i + 1}`, process.execPath, args, { cpu, nofile: 20000, stdin: 'pipe' });
  });
  const stopClients = () => Promise.all(clients.map((c) => stopProcess(c, 5000)));
  try {
    const limit = timeoutMs ?? 60000 + total * 5;
    const results = await Promise.all(clients.map((c) => readJsonLine(c, 0, limit)));
    const latencies = results.flatMap((_, i) => JSON.parse(readFileSync(latencyFile(i), 'utf8'))).sort((a, b) => a - b);
    rmSync(dir, { recursive: true, force: true });
    const startedAt = Math.min(...results.map((r) => r.startedAt));
    const endedAt = Math.max(...results.map((r) => r.endedAt));
    const merged = {
      requested: total,
      processes,
      opened: results.reduce((n, r) => n + r.opened, 0),
      echoed: results.reduce((n, r) => n + r.echoed, 0),
      failed: results.reduce((n, r) => n + r.failed, 0),
      openSeconds: (endedAt - startedAt) / 1000,
      openPerSecond: total / ((endedAt - startedAt) / 1000),
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
      maxMs: latencies.length ? latencies[latencies.length - 1] : null,
      firstError: results.find((r) => r.firstError)?.firstError ?? null,
    };
    const release = async () => {
      try {
        for (const c of clients) c.child.stdin.write('report\n');
        const after = await Promise.all(clients.map((c) => readJsonLine(c, 1, 20000)));
        return after.reduce((n, r) => n + r.stillOpen, 0);
      } finally {
        await stopClients();
      }
    };
    if (!hold) await stopClients();
    return { ...merged, pids: clients.map((c) => c.pid), release };
  } catch (err) {
    await stopClients();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** The admin listener's /stats (JSON). */
export async function adminStats(adminPort) {
  const res = await fetch(`http://127.0.0.1:${adminPort}/stats`, { signal: AbortSignal.timeout(10000) });
  if (!res.ok) throw new Error(`admin /stats answered ${res.status}`);
  return res.json();
}

/** WebSockets open per worker, in worker order ([total] for one process). */
export function perWorker(stats) {
  return Array.isArray(stats.workers) ? stats.workers.map((w) => w.websocketConnections) : [stats.websocketConnections];
}
