// Runs the real CLI (dist/cmux-proxy.js, the bundled dist/cli.js that npm start runs) as a child process.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../../dist/cmux-proxy.js', import.meta.url));

/** Starts the CLI and resolves once it logged its listening line: { child, port, stderr() }. */
export function startCli(args = [], { env = {}, timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cli did not start: ${stderr}`));
    }, timeoutMs);
    child.stderr.on('data', (c) => {
      stderr += c;
      const m = /listening on (?:\[[^\]]+\]|[^:\s]+):(\d+)/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]), stderr: () => stderr });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`cli exited with ${code}: ${stderr}`));
    });
  });
}

/** Runs the CLI to completion: { code, signal, stdout, stderr }. */
export function runCli(args = [], { env = {}, timeoutMs = 10000 } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Sends a signal and resolves with the exit code. */
export function stopCli(child, signal = 'SIGTERM') {
  return new Promise((resolve) => {
    child.once('exit', (code, sig) => resolve({ code, signal: sig }));
    child.kill(signal);
  });
}
