#!/usr/bin/env node
// Longer fuzzing than `npm test` does: rounds of seeded cases (test/helpers/fuzz-core.mjs), each
// round against a fresh proxy child with a new random seed, until --seconds pass. Prints the
// seed and the exact bytes of every failing case; exit 1 when any round found a violation.
//
//   npm run fuzz -- --seconds 120            random seeds for two minutes
//   npm run fuzz -- --seed 1234              one round with that seed (what a failure prints)
//   npm run fuzz -- --seed 1234 --case 17    only case 17 of that seed
//   options: --cases N (per round, 600), --concurrency N (8), --round-seconds N (30)
// Needs a build first (`npm run build`): the proxy child runs dist/.
import { formatViolations, runFuzz } from '../test/helpers/fuzz-core.mjs';

function parseArgs(argv) {
  const out = { seconds: 60, seed: undefined, case: undefined, cases: 600, concurrency: 8, roundSeconds: 30 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    const num = () => {
      i++;
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) {
        console.error(`fuzz: ${a} needs a non-negative integer, got ${JSON.stringify(v)}`);
        process.exit(2);
      }
      return n;
    };
    if (a === '--seconds') out.seconds = num();
    else if (a === '--seed') out.seed = num();
    else if (a === '--case') out.case = num();
    else if (a === '--cases') out.cases = num();
    else if (a === '--concurrency') out.concurrency = Math.max(1, num());
    else if (a === '--round-seconds') out.roundSeconds = Math.max(1, num());
    else if (a === '--help' || a === '-h') {
      console.log('usage: npm run fuzz -- [--seconds N] [--seed S [--case I]] [--cases N] [--concurrency N] [--round-seconds N]');
      process.exit(0);
    } else {
      console.error(`fuzz: unknown argument ${a}`);
      process.exit(2);
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const started = Date.now();
const failedSeeds = [];
let rounds = 0;
let totalCases = 0;
for (;;) {
  const seed = args.seed ?? ((Math.random() * 0x1_0000_0000) >>> 0);
  const left = args.seed !== undefined ? args.roundSeconds : Math.min(args.roundSeconds, args.seconds - (Date.now() - started) / 1000);
  if (left < 1) break;
  const result = await runFuzz({ seed, cases: args.cases, seconds: left, concurrency: args.concurrency, only: args.case });
  rounds++;
  totalCases += result.ran;
  const e = result.end;
  console.log(
    `round ${rounds}: seed ${seed}, ${result.ran} case(s), ${result.violations.length} violation(s); fds ${e.fdBaseline} -> ${e.fdAfter}, RSS ${Math.round(e.rssBaselineKiB / 1024)} -> ${Math.round(e.rssAfterKiB / 1024)} MiB`,
  );
  if (result.violations.length > 0) {
    failedSeeds.push(seed);
    console.log(formatViolations(result, { max: 40 }));
    console.log(`FAILED seed ${seed} (rerun: npm run fuzz -- --seed ${seed})`);
  }
  if (args.seed !== undefined) break;
}
console.log(`fuzz: ${rounds} round(s), ${totalCases} case(s) in ${Math.round((Date.now() - started) / 1000)} s; ${failedSeeds.length === 0 ? 'no violation' : `failing seeds: ${failedSeeds.join(', ')}`}`);
process.exit(failedSeeds.length === 0 ? 0 : 1);
