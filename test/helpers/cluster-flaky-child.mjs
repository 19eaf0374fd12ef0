// A cluster whose workers can be made to fail: a worker exits with code 3 before starting its
// proxy while the file CRASH_FILE exists (after START_DELAY_MS). Each worker answers
// `worker <pid> <VERSION_FILE's text when it started>`, after `?delay=` ms. The primary prints
// {"port", "pids"} once all workers listen, then reads commands on stdin: `restart` runs
// cluster.restart(), `stop` runs cluster.stop(); it prints `restart failed`, `stopped`, and
// `pids [..]` for `pids`.
import { existsSync, readFileSync } from 'node:fs';
import cluster from 'node:cluster';
import readline from 'node:readline';
import { startCluster } from '../../dist/index.js';

if (cluster.isWorker) {
  const delay = Number(process.env.START_DELAY_MS ?? 0);
  if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
  if (existsSync(process.env.CRASH_FILE)) process.exit(3);
}
const version = process.env.VERSION_FILE && existsSync(process.env.VERSION_FILE) ? readFileSync(process.env.VERSION_FILE, 'utf8') : '-';
const c = await startCluster({
  listenPort: 0,
  workers: Number(process.env.WORKERS ?? 1),
  logLevel: 'info',
  handleSignals: false,
  fallback: {
    handler: (req, res) => {
      const delay = Number(new URL(req.url, 'http://x').searchParams.get('delay') ?? 0);
      setTimeout(() => res.end(`worker ${process.pid} ${version}`), delay);
    },
  },
});
if (c !== null) {
  process.stdout.write(`${JSON.stringify({ port: c.address().port, pids: c.workerPids() })}\n`);
  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    if (line === 'restart') {
      c.restart().then(
        () => process.stdout.write('restarted\n'),
        (err) => process.stdout.write(`restart failed: ${err.message}\n`),
      );
    }
    if (line === 'pids') process.stdout.write(`pids ${JSON.stringify(c.workerPids())}\n`);
    if (line === 'stop') c.stop().then(() => process.stdout.write('stopped\n'));
  });
}
