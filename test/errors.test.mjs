// The error catalogue: every code is exported, unique, and documented in the README.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ErrorCodes, UPSTREAM_NOT_DELIVERED, ProxyError } from '../dist/index.js';

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

it('exports unique, documented error codes', () => {
  const codes = Object.values(ErrorCodes);
  assert.ok(codes.length >= 10);
  assert.equal(new Set(codes).size, codes.length);
  for (const code of codes) {
    assert.match(code, /^CMUX_[A-Z_]+$/);
    assert.ok(readme.includes(`\`${code}\``), `${code} is documented in the README`);
  }
});

it('documents every not-delivered upstream code as retry-safe', () => {
  for (const code of UPSTREAM_NOT_DELIVERED) assert.ok(readme.includes(`\`${code}\``), code);
});

it('ProxyError carries code and status', () => {
  const e = new ProxyError(ErrorCodes.NO_ROUTE, 400, 'no route');
  assert.equal(e.code, 'CMUX_NO_ROUTE');
  assert.equal(e.status, 400);
  assert.ok(e instanceof Error);
});

it('the README lists each ErrorCodes key as users write it, with its value', () => {
  const section = readme.slice(readme.indexOf('## Error codes'));
  for (const [key, value] of Object.entries(ErrorCodes)) {
    assert.match(section, new RegExp(`\`ErrorCodes\\.${key}\`[^\\n]*\`${value}\``), `ErrorCodes.${key} = ${value}`);
  }
});
