#!/usr/bin/env node
// Runs every test file under test/ with node:test and fails when no test ran (node --test exits 0
// when nothing matched). Extra arguments are file filters: `npm test -- routing` runs
// test/*routing*.test.mjs only. With CMUX_TEST_NO_SKIP=1 (CI) a skipped or todo test fails the
// run too: every test must run on every tested Node version.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const filters = process.argv.slice(2);
const files = readdirSync('test')
  .filter((f) => f.endsWith('.test.mjs'))
  .filter((f) => filters.length === 0 || filters.some((p) => f.includes(p)))
  .sort()
  .map((f) => join('test', f));
if (files.length === 0) {
  console.error('run-tests: no test file matched');
  process.exit(1);
}
const dir = mkdtempSync(join(tmpdir(), 'cmux-proxy-tests-'));
const tap = join(dir, 'report.tap');
const concurrency = process.env.TEST_CONCURRENCY ?? '2';
const result = spawnSync(
  process.execPath,
  [
    '--test',
    `--test-concurrency=${concurrency}`,
    '--test-reporter=spec',
    '--test-reporter-destination=stdout',
    '--test-reporter=tap',
    `--test-reporter-destination=${tap}`,
    ...files,
  ],
  { stdio: 'inherit' },
);
let report = '';
try {
  report = readFileSync(tap, 'utf8');
} catch {
  // no report: counted as no test below
}
rmSync(dir, { recursive: true, force: true });
const count = (name) => Number(/^# (\w+) (\d+)$/m.test(report) ? (report.match(new RegExp(`^# ${name} (\\d+)$`, 'm'))?.[1] ?? 0) : 0);
const passed = count('pass');
const failed = count('fail');
const tests = count('tests');
const skipped = count('skipped') + count('todo');
if (tests === 0 || passed === 0) {
  console.error('run-tests: no test ran');
  process.exit(1);
}
const noSkip = process.env.CMUX_TEST_NO_SKIP === '1';
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''} (Node ${process.version})`);
if (noSkip && skipped > 0) console.error('run-tests: CMUX_TEST_NO_SKIP=1 and tests were skipped');
process.exit(result.status === 0 && failed === 0 && !(noSkip && skipped > 0) ? 0 : 1);
