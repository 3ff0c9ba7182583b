import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { searchArgs, selectedLines, similarArgs } from '../args';

const uri = 'file:///home/me/proj/pkg/strings.py';
const at = (line: number, character: number) => ({ line, character });

describe('similarArgs', () => {
  it('sends the cursor position when nothing is selected', () => {
    const args = similarArgs({ uri, selection: { start: at(3, 4), end: at(3, 4) }, cursor: at(3, 4) });
    assert.deepEqual(args, { uri, position: { line: 3, character: 4 } });
  });

  it('sends the selected whole lines as an end-exclusive range', () => {
    const args = similarArgs({ uri, selection: { start: at(0, 4), end: at(8, 10) }, cursor: at(8, 10) });
    assert.deepEqual(args, { uri, range: { start: at(0, 0), end: at(9, 0) } });
  });

  it('does not take the line a line-wise selection ends on at column 0', () => {
    assert.deepEqual(selectedLines({ start: at(2, 0), end: at(5, 0) }), { start: at(2, 0), end: at(5, 0) });
    assert.deepEqual(selectedLines({ start: at(2, 3), end: at(2, 9) }), { start: at(2, 0), end: at(3, 0) });
  });

  it('normalises a backwards selection', () => {
    assert.deepEqual(selectedLines({ start: at(7, 2), end: at(4, 1) }), { start: at(4, 0), end: at(8, 0) });
  });

  it('passes k when given', () => {
    assert.equal(similarArgs({ uri, selection: { start: at(1, 0), end: at(1, 0) }, cursor: at(1, 0) }, { k: 5 }).k, 5);
  });
});

describe('searchArgs', () => {
  it('trims the query and leaves k to the server by default', () => {
    assert.deepEqual(searchArgs('  edit distance between strings '), { query: 'edit distance between strings' });
    assert.deepEqual(searchArgs('debounce', { k: 3 }), { query: 'debounce', k: 3 });
  });

  it('is undefined for a blank query (the server rejects empty queries)', () => {
    assert.equal(searchArgs(''), undefined);
    assert.equal(searchArgs(' \t\n'), undefined);
  });
});
