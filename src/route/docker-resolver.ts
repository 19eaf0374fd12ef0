import { http } from '../builtins.js';
import { parsePort } from './host-patterns.js';
import type { ContainerAddressResolver, ResolvedAddress } from './port-resolver.js';

const MAX_BODY = 4 * 1024 * 1024;
const TIMEOUT_MS = 3_000;
/** Docker's own limit on names is lower; this only keeps the request path short. */
const MAX_NAME = 255;

interface PortBinding {
  HostIp?: string;
  HostPort?: string;
}

/**
 * A container name as Docker allows it (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`). Anything else cannot name
 * a container, and must not reach the API path: `..` would walk out of `/containers/`.
 */
export function isContainerName(name: string): boolean {
  const len = name.length;
  if (len === 0 || len > MAX_NAME) return false;
  for (let i = 0; i < len; i++) {
    const c = name.charCodeAt(i);
    const alnum = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
    if (alnum) continue;
    if (i === 0 || (c !== 95 /* _ */ && c !== 46 /* . */ && c !== 45 /* - */)) return false;
  }
  return true;
}

/** 127.0.0.0/8 in dotted-quad form. */
function isLoopbackV4(ip: string): boolean {
  if (!ip.startsWith('127.')) return false;
  let dots = 0;
  let digits = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46) {
      if (digits === 0) return false;
      dots++;
      digits = 0;
    } else if (c >= 48 && c <= 57 && digits < 3) digits++;
    else return false;
  }
  return dots === 3 && digits > 0;
}

/**
 * Where the proxy reaches a published port, from the binding's `HostIp`: all addresses (empty,
 * `0.0.0.0`) and `127.0.0.1` -> the port alone (127.0.0.1), `::` and `::1` -> `::1`, another
 * loopback address as it is. A port published on a non-loopback address is not one this proxy
 * forwards to (it only reaches local upstreams): null, so the next binding is tried.
 */
function bindingAddress(binding: PortBinding): number | ResolvedAddress | null {
  const port = typeof binding.HostPort === 'string' ? parsePort(binding.HostPort) : 0;
  if (port === 0) return null;
  const ip = binding.HostIp ?? '';
  if (ip === '' || ip === '0.0.0.0' || ip === '127.0.0.1') return port;
  if (ip === '::' || ip === '::1') return { host: '::1', port };
  return isLoopbackV4(ip) ? { host: ip, port } : null;
}

/**
 * A container port resolver that asks the Docker Engine API over its unix socket
 * (`GET /containers/<name>/json`) for the host port published for `<port>/tcp`.
 * Unknown container (404), a name Docker would not accept, or no usable binding -> null;
 * anything else rejects, at the latest after `timeoutMs` in all (an answer trickled a byte at a
 * time never trips an idle timeout).
 */
export function createDockerPortResolver(socketPath = '/var/run/docker.sock', timeoutMs = TIMEOUT_MS): ContainerAddressResolver {
  return (container, port) => {
    if (!isContainerName(container)) return Promise.resolve(null);
    return new Promise<number | ResolvedAddress | null>((resolve, reject) => {
      const req = http().request(
        { socketPath, path: `/containers/${container}/json`, method: 'GET', headers: { host: 'docker' } },
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
            clearTimeout(timer);
            if (res.statusCode === 404) return resolve(null);
            if (res.statusCode !== 200) return reject(new Error(`docker API answered ${res.statusCode}`));
            try {
              const info = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
                NetworkSettings?: { Ports?: Record<string, PortBinding[] | null> };
              };
              const bindings = info.NetworkSettings?.Ports?.[`${port}/tcp`];
              if (Array.isArray(bindings)) {
                for (const binding of bindings) {
                  const address = binding !== null && typeof binding === 'object' ? bindingAddress(binding) : null;
                  if (address !== null) return resolve(address);
                }
              }
              resolve(null);
            } catch (err) {
              reject(err as Error);
            }
          });
        },
      );
      const timer = setTimeout(() => req.destroy(new Error('docker API timed out')), timeoutMs);
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.end();
    });
  };
}
