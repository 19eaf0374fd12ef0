// The proxy in a process of its own, for tests whose own process must not host it (the browser
// test: playwright-core enables an AsyncLocalStorage in the test process, see browser.test.mjs).
// Started with child_process.fork(this file, [JSON options]); speaks over the IPC channel:
//   child -> parent  { type: 'ready', port }            once listening
//   parent -> child  { type: 'stats', id }  -> reply { type: 'stats', id, stats: getStats() }
//   parent -> child  { type: 'stop' }       -> stops the proxy and exits 0
// The child also stops and exits when the IPC channel closes (the parent died).
// Option `fallbackModule` (a file path, not a proxy option): that module's createFallback()
// becomes the proxy's `fallback` (a handler cannot travel as JSON).
import { startProxy } from './servers.mjs';

const options = JSON.parse(process.argv[2] ?? '{}');
if (options.fallbackModule) {
  const { createFallback } = await import(options.fallbackModule);
  delete options.fallbackModule;
  options.fallback = createFallback();
}
const { proxy, port } = await startProxy(options);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  const timer = setTimeout(() => process.exit(2), 10_000);
  try {
    await proxy.stop();
  } finally {
    clearTimeout(timer);
    process.exit(0);
  }
}

process.on('message', (msg) => {
  if (msg?.type === 'stats') process.send({ type: 'stats', id: msg.id, stats: proxy.getStats() });
  else if (msg?.type === 'stop') stop();
});
process.on('disconnect', stop);
process.send({ type: 'ready', port });
