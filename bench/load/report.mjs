// Turns the repetitions into summaries (median, min, max), a markdown report with ratios, and the
// performance floors (met / not met) cmux-proxy is held to.
import { summarize } from './measure.mjs';
import { DOWNLOAD_CONNECTIONS } from './workloads.mjs';

/** Downloads through the proxy below this fraction of direct (medians of one run) fail the run. */
export const DOWNLOAD_FLOOR = 0.8;
/** Reported, not gating: the downloads goal. */
export const DOWNLOAD_GOAL = 0.9;

/** { key: {median,min,max,n} } over the successful runs, for every numeric field. */
export function summarizeRuns(runs) {
  const ok = runs.filter((r) => !r.error);
  const keys = new Set(ok.flatMap((r) => Object.keys(r).filter((k) => typeof r[k] === 'number')));
  return Object.fromEntries([...keys].map((k) => [k, summarize(ok.map((r) => r[k]))]));
}

function fmt(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–';
  const abs = Math.abs(x);
  if (digits === 0 || abs >= 1000) return Math.round(x).toLocaleString('en-US');
  return x.toFixed(digits);
}

function cell(s, digits) {
  if (!s || s.median === null) return '–';
  if (s.n < 2 || s.min === s.max) return fmt(s.median, digits);
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

function ratioCell(results, system, key, ref, diff) {
  const a = results[system]?.summary[key]?.median;
  const b = results[ref]?.summary[key]?.median;
  if (system === ref || a === null || a === undefined || b === null || b === undefined) return '–';
  if (diff) return `${a - b >= 0 ? '+' : ''}${(a - b).toFixed(1)}`;
  if (b === 0) return '–';
  return `${(a / b).toFixed(2)}×`;
}

function notes(entry) {
  const failed = entry.runs.filter((r) => r.error);
  const errs = entry.runs.reduce((n, r) => n + (r.errors || 0), 0);
  const out = [];
  if (failed.length) out.push(`${failed.length}/${entry.runs.length} runs failed: ${failed[0].error.split('\n')[0].slice(0, 80)}`);
  if (errs) out.push(`${errs} failed requests`);
  if (entry.runs.some((r) => r.hwmReset === false)) out.push('peak RSS since start (HWM reset refused)');
  return out.join('; ');
}

/** Markdown table for one workload. */
export function workloadTable(workload, results) {
  const systems = workload.systems.filter((s) => results[s]);
  const ratioCols = workload.ratios.flatMap((r) =>
    r.refs.filter((ref) => results[ref]).map((ref) => ({ ...r, ref, header: `${r.label} ${r.diff ? '−' : 'vs'} ${ref}` })),
  );
  const head = ['system', ...workload.columns.map((c) => c.label), ...ratioCols.map((r) => r.header), 'notes'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i === 0 || i === head.length - 1 ? '---' : '---:')).join('|')}|`];
  for (const system of systems) {
    const entry = results[system];
    const row = [
      SYSTEM_LABELS[system] ?? system,
      ...workload.columns.map((c) => cell(entry.summary[c.key], c.digits)),
      ...ratioCols.map((r) => ratioCell(results, system, r.key, r.ref, r.diff)),
      notes(entry),
    ];
    lines.push(`| ${row.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Row names that need more words than the system's name. */
const SYSTEM_LABELS = {
  'cmux-proxy-ref': 'cmux-proxy, reference build (--ref-cli)',
  'cmux-proxy-observed': 'cmux-proxy, HTTP/1.1 with access log and metrics on',
  'cmux-proxy-workers4': 'cmux-proxy --workers 4',
  'cmux-proxy-workers4-young2': 'node --max-semi-space-size=2 cmux-proxy --workers 4',
  'cmux-proxy-single': 'cmux-proxy, one process',
};

const med = (all, w, s, k) => all[w]?.[s]?.summary[k]?.median ?? null;

/**
 * The performance floors cmux-proxy is held to, checked on the medians of this run. Each: { floor, value, limit, met }
 * (met null when a figure is missing).
 */
export function checkFloors(all, cfg) {
  const out = [];
  // gate: a floor the run fails on (exit status 3, FAIL in the table); the others are reported.
  const add = (floor, value, limit, cmp, unit = '', gate = false) => {
    const met = value === null || limit === null ? null : cmp === '<=' ? value <= limit : value >= limit;
    out.push({ floor, value, limit, cmp, unit, met, gate });
  };
  const c = 'cmux-proxy';
  const h1 = (s, k) => med(all, 'h1-small', s, k);
  add('HTTP/1.1 small: CPU µs/req ≤ 1/3 of baseline-ka', h1(c, 'cpuUsPerReq'), h1('baseline-ka', 'cpuUsPerReq') && h1('baseline-ka', 'cpuUsPerReq') / 3, '<=', ' µs');
  add('HTTP/1.1 small: CPU µs/req ≤ 1.2× nginx', h1(c, 'cpuUsPerReq'), h1('nginx', 'cpuUsPerReq') && h1('nginx', 'cpuUsPerReq') * 1.2, '<=', ' µs');
  for (const peer of ['fastify', 'http-proxy-3']) {
    add(`HTTP/1.1 small: CPU µs/req ≤ 1/3 of ${peer}`, h1(c, 'cpuUsPerReq'), h1(peer, 'cpuUsPerReq') && h1(peer, 'cpuUsPerReq') / 3, '<=', ' µs');
  }
  add('HTTP/1.1 small: p99 ≤ 1.5× nginx', h1(c, 'p99Ms'), h1('nginx', 'p99Ms') && h1('nginx', 'p99Ms') * 1.5, '<=', ' ms');
  const h2 = (s, k) => med(all, 'h2c-small', s, k);
  add('h2c small: CPU µs/req ≤ 1/3 of http2-proxy', h2(c, 'cpuUsPerReq'), h2('http2-proxy', 'cpuUsPerReq') && h2('http2-proxy', 'cpuUsPerReq') / 3, '<=', ' µs');
  add('h2c small: CPU µs/req ≤ 1/3 of fastify', h2(c, 'cpuUsPerReq'), h2('fastify', 'cpuUsPerReq') && h2('fastify', 'cpuUsPerReq') / 3, '<=', ' µs');
  add('h2c small: CPU µs/req ≤ 1.3× nginx', h2(c, 'cpuUsPerReq'), h2('nginx', 'cpuUsPerReq') && h2('nginx', 'cpuUsPerReq') * 1.3, '<=', ' µs');
  for (const [w, what] of [['tls-h2-small', 'TLS h2'], ['tls-h1-small', 'TLS HTTP/1.1']]) {
    const t = (s) => med(all, w, s, 'cpuUsPerReq');
    add(`${what} small: CPU µs/req ≤ 1.4× nginx`, t(c), t('nginx') && t('nginx') * 1.4, '<=', ' µs');
  }
  for (const n of DOWNLOAD_CONNECTIONS) {
    const dl = (s) => med(all, `download-1m-c${n}`, s, 'mibps');
    add(`1 MiB downloads, -c${n}: ≥ ${DOWNLOAD_FLOOR}× direct`, dl(c), dl('direct') && dl('direct') * DOWNLOAD_FLOOR, '>=', ' MiB/s', true);
    add(`1 MiB downloads, -c${n}: ≥ ${DOWNLOAD_GOAL}× direct (goal)`, dl(c), dl('direct') && dl('direct') * DOWNLOAD_GOAL, '>=', ' MiB/s');
  }
  const h2cUp = med(all, 'h2c-upload-64m', c, 'h2cVsH1');
  add('h2c 64 MiB upload ≥ 0.8× HTTP/1.1 (same system, same repetition)', h2cUp, all['h2c-upload-64m']?.[c] ? 0.8 : null, '>=', '×');
  const h2cDown = med(all, 'h2c-download-1m', c, 'h2cVsH1');
  add('h2c 1 MiB downloads ≥ 0.8× HTTP/1.1 (same system, same repetition)', h2cDown, all['h2c-download-1m']?.[c] ? 0.8 : null, '>=', '×');
  const up = (s, k) => med(all, 'upload-256m', s, k);
  add('upload ≥ 1.0× nginx', up(c, 'mibps'), up('nginx', 'mibps'), '>=', ' MiB/s');
  add('upload: peak RSS − idle RSS (same fresh process) ≤ 16 MiB', up(c, 'peakGrowthMiB'), all['upload-256m']?.[c] ? 16 : null, '<=', ' MiB');
  const ws = (k) => med(all, 'ws', c, k);
  const wsTarget = Math.min(9500, cfg.wsConnections);
  add(`WebSockets: ≥ ${wsTarget} echoed${cfg.wsConnections < 9500 ? ' (9,500 in full mode)' : ''}`, ws('ok'), all.ws?.[c] ? wsTarget : null, '>=');
  add('WebSockets: ≤ 6 KiB proxy RSS each', ws('kibPerConn'), all.ws?.[c] ? 6 : null, '<=', ' KiB');
  const idleRss = med(all, 'idle', c, 'rssMiB');
  const bare = med(all, 'idle', 'bare-node', 'rssMiB');
  add('idle RSS ≤ bare node + 10 MiB', idleRss, bare === null ? null : bare + 10, '<=', ' MiB');
  const rps = (s) => med(all, 'rps-1000', s, 'cpuPct');
  add('CPU at 1,000 req/s ≤ 1.2× nginx', rps(c), rps('nginx') && rps('nginx') * 1.2, '<=', ' %');
  return out;
}

export function floorsTable(floors) {
  const lines = ['| floor | cmux-proxy | limit | met |', '|---|---:|---:|---|'];
  for (const f of floors) {
    const v = f.value === null ? '–' : `${fmt(f.value, 2)}${f.unit}`;
    const l = f.limit === null ? '–' : `${f.cmp} ${fmt(f.limit, 2)}${f.unit}`;
    const verdict = f.met === null ? 'n/a' : f.met ? 'yes' : f.gate ? '**FAIL**' : '**no**';
    lines.push(`| ${f.floor} | ${v} | ${l} | ${verdict} |`);
  }
  return lines.join('\n');
}

/**
 * The summary the README carries: one row per figure the proxy is judged on, cmux-proxy beside the
 * other systems of the same run, and its ratios. Cells are medians; `spread` rows add min–max.
 */
const SUMMARY_COLUMNS = ['cmux-proxy', 'nginx', 'direct', 'baseline-ka', 'http-proxy-3', 'fastify', 'http2-proxy', 'node-splice'];
const SUMMARY_ROWS = [
  { label: 'HTTP/1.1 small, req/s (`wrk -t1 -c50`)', workload: 'h1-small', key: 'rps', digits: 0, refs: ['nginx', 'direct'] },
  { label: 'HTTP/1.1 small, CPU µs/req', workload: 'h1-small', key: 'cpuUsPerReq', refs: ['nginx', 'baseline-ka', 'http-proxy-3', 'fastify', 'node-splice'] },
  { label: 'HTTP/1.1 small, p99 ms', workload: 'h1-small', key: 'p99Ms', digits: 2, refs: ['nginx'] },
  { label: 'h2c small, CPU µs/req (`h2load -c10 -m10`)', workload: 'h2c-small', key: 'cpuUsPerReq', refs: ['nginx', 'http2-proxy', 'fastify'] },
  { label: 'TLS h2 small, CPU µs/req (`h2load -c8 -m10`)', workload: 'tls-h2-small', key: 'cpuUsPerReq', refs: ['nginx'] },
  { label: 'TLS HTTP/1.1 small, CPU µs/req (`h2load --h1 -c8 -m10`)', workload: 'tls-h1-small', key: 'cpuUsPerReq', refs: ['nginx'] },
  ...DOWNLOAD_CONNECTIONS.map((n) => ({
    label: `1 MiB downloads, MiB/s (\`wrk -t1 -c${n}\`)`, workload: `download-1m-c${n}`, key: 'mibps', digits: 0, refs: ['direct', 'nginx'], spread: true,
  })),
  { label: '1 MiB downloads, upstream without tcp_nopush, MiB/s (`wrk -t1 -c4`)', workload: 'uncorked-download-1m-c4', key: 'mibps', digits: 0, refs: ['direct', 'nginx'], spread: true },
  { label: '256 MiB upload, MiB/s', workload: 'upload-256m', key: 'mibps', digits: 0, refs: ['nginx', 'direct'] },
  { label: 'upload peak RSS over idle, MiB', workload: 'upload-256m', key: 'peakGrowthMiB', refs: [] },
  { label: 'h2c 64 MiB upload ÷ HTTP/1.1 (same system)', workload: 'h2c-upload-64m', key: 'h2cVsH1', digits: 2, refs: [] },
  { label: 'h2c 1 MiB downloads ÷ HTTP/1.1 (same system)', workload: 'h2c-download-1m', key: 'h2cVsH1', digits: 2, refs: [] },
  { label: 'KiB RSS per open WebSocket', workload: 'ws', key: 'kibPerConn', refs: ['nginx'] },
  { label: 'CPU % of a core at 1,000 req/s', workload: 'rps-1000', key: 'cpuPct', digits: 2, refs: ['nginx', 'baseline-ka', 'node-splice'] },
  { label: 'idle RSS, MiB', workload: 'idle', key: 'rssMiB', refs: [] },
];

export function summaryTable(all) {
  const columns = SUMMARY_COLUMNS.filter((s) => SUMMARY_ROWS.some((r) => all[r.workload]?.[s]));
  const head = ['workload', ...columns, 'cmux-proxy ÷'];
  const lines = [`| ${head.join(' | ')} |`, `|---|${columns.map(() => '---:').join('|')}|---|`];
  for (const row of SUMMARY_ROWS) {
    const results = all[row.workload];
    if (!results?.['cmux-proxy']) continue;
    const value = (s) => results[s]?.summary[row.key];
    const cells = columns.map((s) => {
      const v = value(s);
      if (!v || v.median === null) return '–';
      return row.spread ? cell(v, row.digits ?? 1) : fmt(v.median, row.digits ?? 1);
    });
    const ratios = row.refs
      .filter((ref) => value(ref)?.median)
      .map((ref) => `${ref} ${(value('cmux-proxy').median / value(ref).median).toFixed(2)}×`);
    lines.push(`| ${row.label} | ${cells.join(' | ')} | ${ratios.join(', ') || '–'} |`);
  }
  return lines.join('\n');
}

/** The whole markdown report. */
export function markdownReport({ meta, workloads, results, floors }) {
  const out = [];
  out.push(`## Load benchmark (${meta.mode} mode, ${meta.reps} repetitions, medians with min–max)`);
  out.push('');
  out.push(`- ${meta.date} · Node ${meta.node} · ${meta.nginx} · ${meta.wrk} · ${meta.h2load}`);
  out.push(`- ${meta.cpuModel} · ${meta.cpus} CPUs · proxy pinned to CPU ${meta.proxyCpu}, load generators and upstreams to CPU ${meta.loadCpu}`);
  out.push(`- command: \`${meta.command}\` (took ${meta.durationSeconds} s)`);
  const sec = meta.config.seconds;
  out.push(
    `- loads: HTTP/1.1 ${sec.h1} s, h2c ${sec.h2c} s, downloads ${sec.download} s, fixed rate ${sec.rps} s per run; ` +
      `upload ${meta.config.uploadBytes / 1048576} MiB; ${meta.config.wsConnections} WebSockets`,
  );
  out.push('- CPU figures are the proxy process tree only (utime+stime from /proc); "direct" has no proxy.');
  out.push('');
  out.push('### Summary (medians; downloads with min–max)');
  out.push('');
  out.push(summaryTable(results));
  for (const w of workloads) {
    if (!results[w.name]) continue;
    out.push('');
    out.push(`### ${w.name}: ${w.title}`);
    out.push('');
    out.push(workloadTable(w, results[w.name]));
  }
  if (floors.some((f) => f.value !== null)) {
    out.push('');
    out.push('### Performance floors (medians of this run; FAIL marks a floor that fails the run)');
    out.push('');
    out.push(floorsTable(floors));
  }
  return out.join('\n');
}
