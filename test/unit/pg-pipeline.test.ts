// The pipeline's bookkeeping: names change only when the target confirms; errors skip to Sync.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pipeline, type Tracked } from '../../src/protocols/postgres/pipeline.ts';

function setup() {
  const log = { finished: [] as Tracked[], released: 0, forgotten: [] as string[] };
  const p = new Pipeline({
    finished: (t) => log.finished.push(t),
    released: () => log.released++,
    forget: (m) => log.forgotten.push(m),
  });
  return { p, log };
}
const text = (l: ReturnType<Pipeline['statement']>) => ('text' in l ? l.text : 'WAIT');

test('a Parse is visible to its own batch at once and to the store of names only when confirmed', () => {
  const { p } = setup();
  p.parse('s1', 'SELECT 1');
  assert.equal(text(p.statement('s1')), 'SELECT 1');
  p.sync();
  assert.equal(text(p.statement('s1')), 'WAIT', 'a later batch waits for the answer');
  p.confirmed('1');
  p.ready(true);
  assert.equal(text(p.statement('s1')), 'SELECT 1');
});

test('a failed re-Parse leaves the old statement, as on the target', () => {
  const { p } = setup();
  p.parse('s1', 'SELECT 1');
  p.sync();
  p.confirmed('1');
  p.ready(true);
  p.parse('s1', 'DELETE FROM t');
  p.sync();
  p.failed('42P05 prepared statement "s1" already exists');
  p.ready(true);
  assert.equal(text(p.statement('s1')), 'SELECT 1');
});

test('after an extended-protocol error everything up to Sync is skipped, simple Queries included', () => {
  const { p, log } = setup();
  const exec: Tracked = { started: 0 };
  const ignoredQuery: Tracked = { started: 0 };
  p.parse('', 'SELECT broken');
  p.bind('', 'SELECT broken');
  p.execute(exec);
  p.query(ignoredQuery, 'marker-1', true);
  p.sync();
  p.failed('42703 column does not exist');
  assert.equal(p.pending, 1, 'only the Sync is left');
  assert.deepEqual(log.finished, [exec, ignoredQuery]);
  assert.equal(exec.skipped, true);
  assert.equal(ignoredQuery.skipped, true);
  assert.equal(log.released, 1, 'a barrier held by a skipped Query is released');
  assert.deepEqual(log.forgotten, ['marker-1']);
  p.ready(true);
  assert.equal(p.pending, 0);
  assert.equal(text(p.portal('')), undefined);
});

test("a simple Query's error belongs to it; rows add up until ReadyForQuery", () => {
  const { p, log } = setup();
  const q: Tracked = { started: 0 };
  p.query(q);
  p.completed(2, true);
  p.completed(3, true);
  p.failed('22012 division by zero');
  assert.equal(p.pending, 1);
  p.ready(true);
  assert.deepEqual(log.finished, [q]);
  assert.equal(q.rows, 5);
  assert.equal(q.error, '22012 division by zero');
});

test('portals live until the transaction ends; Close removes names once confirmed', () => {
  const { p } = setup();
  p.bind('cur', 'SELECT 1');
  p.sync();
  p.confirmed('2');
  p.ready(false); // still in a transaction
  assert.equal(text(p.portal('cur')), 'SELECT 1');
  p.close('P', 'cur');
  assert.equal(text(p.portal('cur')), undefined);
  p.sync();
  p.confirmed('3');
  p.ready(true);
  assert.equal(text(p.portal('cur')), undefined);
  p.bind('x', 'SELECT 2');
  p.sync();
  p.confirmed('2');
  p.ready(true); // transaction over: portals are gone
  assert.equal(text(p.portal('x')), undefined);
});

test('an error raised at Sync (deferred constraint at the implicit commit) leaves the next batch alone', () => {
  const { p } = setup();
  const first: Tracked = { started: 0 };
  p.parse('', 'INSERT INTO t VALUES (1)');
  p.bind('', 'INSERT INTO t VALUES (1)');
  p.execute(first);
  p.sync();
  p.parse('s2', 'SELECT 2'); // pipelined second batch
  p.sync();
  p.confirmed('1');
  p.confirmed('2');
  p.completed(1, true);
  p.failed('23505 duplicate key value violates unique constraint'); // at the first Sync
  p.ready(true);
  p.confirmed('1'); // the second batch's ParseComplete: must not be out of order
  p.ready(true);
  assert.equal(p.pending, 0);
  assert.equal(text(p.statement('s2')), 'SELECT 2');
});

test('answers out of order are a protocol error', () => {
  const { p } = setup();
  p.bind('', 'SELECT 1');
  assert.throws(() => p.confirmed('1'), /out of order/);
});

test('row descriptions follow statements and portals: Describe S, Bind with result formats, Execute', () => {
  const { p } = setup();
  const field = (name: string) => ({ name, tableOid: 16384, column: 1, typeOid: 25, typeLen: -1, typeMod: -1, format: 0 });
  p.parse('s1', 'SELECT a, b FROM t');
  p.describe('S', 's1');
  p.sync();
  p.confirmed('1');
  p.described([field('a'), field('b')]);
  p.ready(true);
  const exec: Tracked = { started: 0 };
  p.bind('', 'SELECT a, b FROM t', 's1', [1]);
  p.execute(exec, undefined, '');
  p.sync();
  p.confirmed('2');
  const cur = p.current();
  assert.equal(cur?.tracked, exec);
  assert.deepEqual(cur?.fields?.map((f) => [f.name, f.format]), [['a', 1], ['b', 1]], 'one result format applies to all columns');
  p.completed(1, true); // the Execute's CommandComplete
  p.ready(true); // its Sync
  assert.equal(p.pending, 0);
  const q: Tracked = { started: 0 };
  p.query(q);
  p.described([field('x')]);
  assert.equal(p.current()?.tracked, q);
  assert.equal(p.current()?.fields?.[0].name, 'x', 'a simple Query is described by its own RowDescription');
});
