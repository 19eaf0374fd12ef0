// startCluster() from the API, as an embedding script uses it: the same script runs in the
// primary and in each worker. The fallback handler (a function, which cannot cross processes) is
// made in each worker. The primary prints {"port", "pids"} on stdout once all workers listen.
import { startCluster } from '../../dist/index.js';

const c = await startCluster({
  listenPort: 0,
  workers: Number(process.env.WORKERS ?? 2),
  logLevel: 'silent',
  ...(process.env.WATCHDOG_MS === undefined ? {} : { workerWatchdogMs: Number(process.env.WATCHDOG_MS) }),
  fallback: { handler: (req, res) => res.end(`worker ${process.pid} ${req.headers['x-forwarded-for']}`) },
});
if (c !== null) process.stdout.write(`${JSON.stringify({ port: c.address().port, pids: c.workerPids() })}\n`);
