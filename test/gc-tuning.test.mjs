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
