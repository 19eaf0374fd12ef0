// The repository stands alone: a user clones only this repository, so no file may point at a
// folder beside it, at documents that are not in it, or at tracker numbers a reader cannot open.
// Comments and test names state the rule itself; standards are cited as "RFC <n> <section>".
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('..', import.meta.url));

/** Each: what is forbidden, and a pattern for it (written so that this file does not match). */
const FORBIDDEN = [
  ['a path into a sibling folder', /\.\.\/shared\b|\bshared\//],
  ['an outside specification document', /S[P]EC/],
  ['an outside design document', /DESIGN[.]md/],
  ['an issue number', /\b[Ii]ssues?[ -]?#?\d/],
  ['a "#<number>" tracker reference', /(?<![\w&/])#\d+\b/],
  ['a section sign that does not follow "RFC <number>"', /(?<!RFC\s+\d{3,5}\s+)\u00a7/],
];

function trackedFiles() {
  return execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: repo, encoding: 'utf8' })
    .split('\0')
    .filter((f) => f !== '' && f !== 'node_modules' && f !== 'package-lock.json');
}

describe('the repository stands alone', () => {
  it('no tracked file refers to a sibling folder, an outside document or an issue number', () => {
    const files = trackedFiles();
    assert.ok(files.includes('README.md') && files.includes('src/server.ts'), 'the file list is the repository');
    const found = [];
    for (const file of files) {
      let text;
      try {
        text = readFileSync(join(repo, file), 'utf8');
      } catch {
        continue; // deleted in the working tree
      }
      if (text.includes('\0')) continue; // binary
      for (const [what, pattern] of FORBIDDEN) {
        const global = new RegExp(pattern.source, `${pattern.flags}g`);
        for (const m of text.matchAll(global)) {
          const line = text.slice(0, m.index).split('\n').length;
          found.push(`${file}:${line}: ${what}: ${text.split('\n')[line - 1].trim().slice(0, 120)}`);
        }
      }
    }
    assert.deepEqual(found, []);
  });

  it('the benchmark baseline is in the repository', () => {
    const servers = readFileSync(join(repo, 'bench/load/servers.mjs'), 'utf8');
    assert.match(servers, /baseline: resolve\(here, '\.\.\/baseline\/old-cmux-proxy\.mjs'\)/);
    assert.ok(trackedFiles().includes('bench/baseline/old-cmux-proxy.mjs'));
  });
});
