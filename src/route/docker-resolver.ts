import { http } from '../builtins.js';
import type { ContainerPortResolver } from '../options.js';

const MAX_BODY = 4 * 1024 * 1024;
const TIMEOUT_MS = 3_000;

interface PortBinding {
  HostIp?: string;
  HostPort?: string;
}

/**
 * A container port resolver that asks the Docker Engine API over its unix socket
 * (`GET /containers/<name>/json`) for the host port published for `<port>/tcp`.
 * Unknown container (404) or unpublished port -> null; anything else rejects.
 */
export function createDockerPortResolver(socketPath = '/var/run/docker.sock'): ContainerPortResolver {
  return (container, port) =>
    new Promise<number | null>((resolve, reject) => {
      const req = http().request(
        { socketPath, path: `/containers/${encodeURIComponent(container)}/json`, method: 'GET', timeout: TIMEOUT_MS, headers: { host: 'docker' } },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_BODY) {
              req.destroy(new Error('docker API answer too large'));
              return;
            }
            chunks.push(chunk);
          });
          res.on('error', reject);
          res.on('end', () => {
            if (res.statusCode === 404) return resolve(null);
            if (res.statusCode !== 200) return reject(new Error(`docker API answered ${res.statusCode}`));
            try {
              const info = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
                NetworkSettings?: { Ports?: Record<string, PortBinding[] | null> };
              };
              const bindings = info.NetworkSettings?.Ports?.[`${port}/tcp`];
              const hostPort = Number(bindings?.find((b) => b.HostPort)?.HostPort);
              resolve(Number.isInteger(hostPort) && hostPort > 0 && hostPort < 65536 ? hostPort : null);
            } catch (err) {
              reject(err as Error);
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('docker API timed out')));
      req.on('error', reject);
      req.end();
    });
}
