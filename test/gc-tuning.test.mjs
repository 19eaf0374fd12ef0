// The CLI's young-generation cap (src/gc-tuning.ts): while objects that all survive are made over
// many event-loop turns (thousands of WebSockets opening), V8 doubles the young generation up to
// 16 MiB per semi-space (32 on Node 24) and keeps it; after capYoungGeneration() it stops at 4 MiB
// per semi-space (8 MiB for both), as with `node --max-semi-space-size=4`.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';

const child = (cap) => `
import v8 from 'node:v8';
import { capYoungGeneration } from './dist/gc-tuning.js';
${cap ? 'capYoungGeneration();' : ''}
const young = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
const keep = [];
for (let i = 0; i < 400000; i++) {
  keep.push({ a: i, b: [i], c: 'x' + i });
  if (i % 2000 === 0) await new Promise((resolve) => setImmediate(resolve));
}
await new Promise((resolve) => setTimeout(resolve, 50));
process.stdout.write(JSON.stringify({ young: young(), kept: keep.length }));
`;

function run(cap) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', child(cap)], { cwd: new URL('..', import.meta.url) }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout));
    });
  });
}

const MiB = 1024 * 1024;

describe('young-generation cap', () => {
  it('stops the young generation at 4 MiB per semi-space; without it the same allocations grow it to 16 MiB or more', async () => {
    const [capped, free] = await Promise.all([run(true), run(false)]);
    assert.equal(capped.kept, 400000);
    assert.ok(capped.young <= 8 * MiB, `capped young generation ${capped.young / MiB} MiB`);
    assert.ok(free.young >= 32 * MiB, `uncapped young generation ${free.young / MiB} MiB`);
  });
});

// The CLI's old-generation growth limit (limitOldGenerationGrowth): objects that outlive two
// scavenges and then die (what each of thousands of WebSockets opening in a burst leaves) are
// garbage in the old generation until the next mark-compact. V8 lets a small heap grow to ~4x
// what the last one left live first; at 1.3x the same allocations make 4-6 mark-compacts instead
// of 1-2 and peak ~20-30 % lower on a quiet machine (V8 marks concurrently, so on a busy one the
// heap grows further before each mark-compact ends, in both cases).
const burst = (limit) => `
import v8 from 'node:v8';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { capYoungGeneration, limitOldGenerationGrowth } from './dist/gc-tuning.js';
capYoungGeneration();
${limit ? 'limitOldGenerationGrowth();' : ''}
let majors = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors++;
}).observe({ entryTypes: ['gc'] });
const oldSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'old_space').space_size;
const kept = [];
let recent = [];
let peak = 0;
for (let turn = 0; turn < 3000; turn++) {
  for (let i = 0; i < 100; i++) kept.push({ a: turn, b: [i], c: 'k' + i });
  // Held for 300-600 turns: long enough to be promoted, then dropped.
  recent.push(Array.from({ length: 100 }, (_, i) => ({ x: turn, y: [i, i], z: 'g' + i })));
  if (recent.length > 600) recent = recent.slice(300);
  await new Promise((resolve) => setImmediate(resolve));
  peak = Math.max(peak, oldSpace());
}
await new Promise((resolve) => setTimeout(resolve, 20));
process.stdout.write(JSON.stringify({ peak, majors, kept: kept.length }));
`;

function runBurst(limit) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', burst(limit)], { cwd: new URL('..', import.meta.url) }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout));
    });
  });
}

describe('old-generation growth limit', () => {
  it('collects promoted garbage sooner: more mark-compacts, a lower old-generation peak', async () => {
    const limited = await runBurst(true);
    const free = await runBurst(false);
    assert.equal(limited.kept, 300000);
    assert.ok(limited.majors >= free.majors + 2, `mark-compacts ${limited.majors} limited, ${free.majors} free`);
    console.log(`# old generation peak ${(limited.peak / MiB).toFixed(1)} MiB limited (${limited.majors} mark-compacts), ${(free.peak / MiB).toFixed(1)} MiB free (${free.majors})`);
    assert.ok(limited.peak <= 0.95 * free.peak, `old generation peak ${(limited.peak / MiB).toFixed(1)} MiB limited, ${(free.peak / MiB).toFixed(1)} MiB free`);
  });
});
