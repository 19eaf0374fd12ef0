// What the benchmark reads: CPU time and memory of a process tree from /proc, medians and spreads,
// and the text output of wrk and h2load.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** Fields of /proc/<pid>/stat after the "(comm)" part; index 0 is field 3 (state). */
function statFields(pid) {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/** All live descendants of pid (children, grandchildren, ...), by scanning /proc. */
export function descendants(pid) {
  const parentOf = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      parentOf.set(Number(name), Number(statFields(name)[1]));
    } catch {
      /* exited while we looked */
    }
  }
  const out = [];
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift();
    for (const [child, parent] of parentOf) {
      if (parent === p) {
        out.push(child);
        queue.push(child);
      }
    }
  }
  return out;
}

const tree = (pid) => [pid, ...descendants(pid)];

/**
 * CPU seconds used so far by pid and its descendants: utime+stime of every live process in the
 * tree plus cutime+cstime (children already reaped), so nothing is lost when a child exits.
 */
export function cpuSeconds(pid) {
  let ticks = 0;
  for (const p of tree(pid)) {
    try {
      const f = statFields(p);
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch {
      /* exited */
    }
  }
  return ticks / CLK_TCK;
}

function statusKiB(pid, field) {
  let total = 0;
  for (const p of tree(pid)) {
    try {
      const m = readFileSync(`/proc/${p}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
      if (m) total += Number(m[1]);
    } catch {
      /* exited */
    }
  }
  return total;
}

/** Resident set size of the tree, KiB. */
export const rssKiB = (pid) => statusKiB(pid, 'VmRSS');
/** Peak resident set size (high-water mark) of the tree, KiB (sum of each process's peak). */
export const hwmKiB = (pid) => statusKiB(pid, 'VmHWM');

/**
 * Resets the RSS high-water mark of the tree to the current RSS (`echo 5 > clear_refs`, Linux >= 4.0),
 * so a long-running process can report the peak of one run. Returns false when not permitted.
 */
export function resetHwm(pid) {
  let ok = true;
  for (const p of tree(pid)) {
    try {
      writeFileSync(`/proc/${p}/clear_refs`, '5');
    } catch {
      ok = false;
    }
  }
  return ok;
}

/**
 * Milliseconds the process's main thread has spent runnable but waiting for a CPU
 * (/proc/<pid>/schedstat, second field; null where it cannot be read). On a shared machine this
 * tells a proxy that was slow from one that was not scheduled.
 */
export function runQueueWaitMs(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e6;
  } catch {
    return null;
  }
}

/** CPU seconds and wall seconds around `fn`, for the tree of `pid` (null pid: no CPU figure). */
export async function withCpu(pid, fn) {
  const cpu0 = pid ? cpuSeconds(pid) : null;
  const t0 = process.hrtime.bigint();
  const result = await fn();
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = pid ? cpuSeconds(pid) - cpu0 : null;
  return { result, cpu, wall };
}

// ---- statistics -----------------------------------------------------------------------------

export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** { median, min, max, n } of the finite numbers in `values` (null fields when there are none). */
export function summarize(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x));
  if (!v.length) return { median: null, min: null, max: null, n: 0 };
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

// ---- wrk and h2load output --------------------------------------------------------------------

const TIME_UNITS = { us: 1e-3, ms: 1, s: 1000, m: 60000, h: 3600000 };
const SIZE_UNITS = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 };

function toMs(value, unit) {
  return Number(value) * TIME_UNITS[unit];
}

/**
 * Parses `wrk --latency` output: { requests, seconds, bytes, rps, p50Ms, p99Ms, non2xx, socketErrors }.
 * Throws when the summary lines are missing.
 */
export function parseWrk(text) {
  const total = text.match(/(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read/);
  const rps = text.match(/Requests\/sec:\s+([\d.]+)/);
  if (!total || !rps) throw new Error(`unexpected wrk output:\n${text}`);
  const pct = (p) => {
    const m = text.match(new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)`, 'm'));
    return m ? toMs(m[1], m[2]) : null;
  };
  const non2xx = Number(text.match(/Non-2xx or 3xx responses: (\d+)/)?.[1] ?? 0);
  const sock = text.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/);
  return {
    requests: Number(total[1]),
    seconds: toMs(total[2], total[3]) / 1000,
    bytes: Number(total[4]) * SIZE_UNITS[total[5]],
    rps: Number(rps[1]),
    p50Ms: pct(50),
    p99Ms: pct(99),
    non2xx,
    socketErrors: sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
  };
}

/**
 * Parses h2load output: { seconds, rps, total, started, done, succeeded, failed, errored, timeout,
 * status2xx, statusErrors (4xx+5xx), meanMs }. Throws when the summary lines are missing.
 */
export function parseH2load(text) {
  const fin = text.match(/finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req\/s/);
  const req = text.match(
    /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/,
  );
  if (!fin || !req) throw new Error(`unexpected h2load output:\n${text}`);
  const codes = text.match(/status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/);
  const reqTime = text.match(/time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)/);
  const [total, started, done, succeeded, failed, errored, timeout] = req.slice(1).map(Number);
  return {
    seconds: toMs(fin[1], fin[2]) / 1000,
    rps: Number(fin[3]),
    total,
    started,
    done,
    succeeded,
    failed,
    errored,
    timeout,
    status2xx: codes ? Number(codes[1]) : null,
    statusErrors: codes ? Number(codes[3]) + Number(codes[4]) : 0,
    meanMs: reqTime ? toMs(reqTime[5], reqTime[6]) : null,
  };
}
