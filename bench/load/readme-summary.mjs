#!/usr/bin/env node
// Writes one full run's summary and floors into README.md, between the bench-summary markers, so
// that the README's figures always come from one run: `node bench/load/readme-summary.mjs
// [bench/results/latest.json]`.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { floorsTable, summaryTable } from './report.mjs';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const START = '<!-- bench-summary:start -->';
const END = '<!-- bench-summary:end -->';

const jsonFile = resolve(process.argv[2] ?? resolve(repoRoot, 'bench/results/latest.json'));
const { meta, results, floors } = JSON.parse(readFileSync(jsonFile, 'utf8'));
const met = floors.filter((f) => f.met === true).length;
const judged = floors.filter((f) => f.met !== null).length;
const block = [
  START,
  `Latest full run: \`${meta.command}\`, ${meta.date.slice(0, 10)}, Node ${meta.node}, ${meta.nginx}, ${meta.wrk}, ${meta.h2load}; ` +
    `${meta.cpus}× ${meta.cpuModel}; proxy on CPU ${meta.proxyCpu}, load tools and upstreams on CPU ${meta.loadCpu}; ` +
    `${meta.reps} repetitions, ${meta.durationSeconds} s. Medians; ratios are cmux-proxy's median over the other system's, from the same run.`,
  '',
  summaryTable(results),
  '',
  `Floors in the same run (${met} of ${judged} met; limits computed from this run's medians):`,
  '',
  floorsTable(floors),
  END,
].join('\n');

const readmeFile = resolve(repoRoot, 'README.md');
const readme = readFileSync(readmeFile, 'utf8');
const from = readme.indexOf(START);
const to = readme.indexOf(END);
if (from < 0 || to < from) {
  console.error(`readme-summary: README.md has no ${START} … ${END} block`);
  process.exit(1);
}
writeFileSync(readmeFile, readme.slice(0, from) + block + readme.slice(to + END.length));
console.log(`readme-summary: README.md now carries the run of ${meta.date} (${jsonFile})`);
