import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Result, SearchResponse } from '../protocol';
import { firstLine, incompleteNote, lineSpan, toItems, toLocations } from '../results';

const hit = (over: Partial<Result> = {}): Result => ({
  uri: 'file:///home/me/proj/pkg/strings.py',
  range: { start: { line: 0, character: 0 }, end: { line: 9, character: 0 } },
  path: 'pkg/strings.py',
  folder: 'file:///home/me/proj',
  symbol: 'levenshtein_distance',
  kind: 'function',
  language: 'python',
  score: 0.73051,
  exit: 6,
  snippet: '\ndef levenshtein_distance(left: str, right: str) -> int:\n    """Edits."""\n',
  ...over,
});

describe('toItems', () => {
  it('shows symbol, score, path with lines, and the first code line', () => {
    const [item] = toItems({ results: [hit()], incomplete: [] });
    assert.equal(item.label, '$(symbol-function) levenshtein_distance');
    assert.equal(item.description, '0.731  pkg/strings.py:1-9');
    assert.equal(item.detail, 'def levenshtein_distance(left: str, right: str) -> int:');
    assert.equal(item.alwaysShow, true);
    assert.equal(item.uri, 'file:///home/me/proj/pkg/strings.py');
    assert.deepEqual(item.range.start, { line: 0, character: 0 });
  });

  it('keeps the server order and labels code without a symbol by path:line', () => {
    const items = toItems({
      results: [hit({ score: 0.9 }), hit({ symbol: null, kind: 'window', path: 'a.py', range: { start: { line: 40, character: 0 }, end: { line: 41, character: 0 } } })],
      incomplete: [],
    });
    assert.equal(items.length, 2);
    assert.equal(items[1].label, '$(symbol-snippet) a.py:41');
    assert.equal(items[1].description, '0.731  a.py:41');
  });

  it('names the folder when several are open', () => {
    const names = new Map([
      ['file:///home/me/proj', 'proj'],
      ['file:///home/me/other', 'other'],
    ]);
    const [item] = toItems({ results: [hit()], incomplete: [] }, { folderNames: names });
    assert.equal(item.description, '0.731  proj › pkg/strings.py:1-9');
    const [single] = toItems({ results: [hit()], incomplete: [] }, { folderNames: new Map([['file:///home/me/proj', 'proj']]) });
    assert.equal(single.description, '0.731  pkg/strings.py:1-9');
  });

  it('uses a generic icon for unknown kinds', () => {
    const [item] = toItems({ results: [hit({ kind: null })], incomplete: [] });
    assert.match(item.label, /^\$\(symbol-misc\) /);
  });
});

describe('helpers', () => {
  it('lineSpan is 1-based and end-exclusive aware', () => {
    assert.equal(lineSpan({ start: { line: 0, character: 0 }, end: { line: 9, character: 0 } }), '1-9');
    assert.equal(lineSpan({ start: { line: 4, character: 0 }, end: { line: 5, character: 0 } }), '5');
    assert.equal(lineSpan({ start: { line: 4, character: 2 }, end: { line: 6, character: 3 } }), '5-7');
  });

  it('firstLine skips blank lines', () => {
    assert.equal(firstLine('\n\n   x = 1\ny'), 'x = 1');
    assert.equal(firstLine(''), '');
  });

  it('toLocations keeps uri and range', () => {
    const response: SearchResponse = { results: [hit()], incomplete: [] };
    assert.deepEqual(toLocations(response), [{ uri: hit().uri, range: hit().range }]);
  });

  it('incompleteNote names folders still indexing', () => {
    assert.equal(incompleteNote({ results: [], incomplete: [] }), undefined);
    const note = incompleteNote({ results: [], incomplete: ['file:///home/me/proj'] }, new Map([['file:///home/me/proj', 'proj']]));
    assert.equal(note, 'Still indexing proj: results may be missing.');
  });
});
