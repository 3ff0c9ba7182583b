import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { FolderStatus, StatusResponse } from '../protocol';
import { isSettling, ProgressTracker, statusView } from '../status';

const folder = (over: Partial<FolderStatus> = {}): FolderStatus => ({
  uri: 'file:///home/me/proj',
  name: 'proj',
  state: 'ready',
  error: null,
  files: 120,
  indexedFiles: 112,
  chunks: 2310,
  deepCoverage: 0.42,
  ...over,
});
const status = (folders: FolderStatus[], warnings: string[] = []): StatusResponse => ({ version: '0.1.0', settings: {}, warnings, folders });

describe('ProgressTracker', () => {
  it('shows the running work with its percentage, then nothing once it ends', () => {
    const t = new ProgressTracker();
    assert.equal(t.view(), undefined);
    t.begin('tok', 'mose: indexing proj');
    assert.equal(t.view()?.text, '$(sync~spin) mose: indexing proj');
    t.report('tok', 41.6, '50/120 files');
    assert.equal(t.view()?.text, '$(sync~spin) mose: indexing proj 42%');
    assert.match(t.view()?.tooltip ?? '', /50\/120 files/);
    t.report('unknown', 99);
    t.end('tok');
    assert.equal(t.busy, false);
    assert.equal(t.view(), undefined);
  });
});

describe('statusView', () => {
  it('summarises ready folders with chunk counts and coverage', () => {
    const view = statusView(status([folder(), folder({ name: 'other', chunks: 10 })]));
    assert.equal(view.text, '$(search) mose 2320');
    assert.equal(view.severity, 'ok');
    assert.match(view.tooltip, /proj: ready, 112\/120 files, 2310 chunks, deep 42%/);
  });

  it('flags errors, indexing and warnings', () => {
    const err = statusView(status([folder({ state: 'error', error: 'model directory missing', chunks: null })]));
    assert.equal(err.severity, 'error');
    assert.equal(err.text, '$(error) mose');
    assert.match(err.tooltip, /model directory missing/);
    const busy = statusView(status([folder({ state: 'indexing' })]));
    assert.equal(busy.text, '$(sync~spin) mose');
    const warn = statusView(status([folder()], ["setting 'limit'=0 is invalid"]));
    assert.equal(warn.severity, 'warning');
    assert.match(warn.tooltip, /limit/);
  });

  it('polls while a folder is loading or indexing', () => {
    assert.equal(isSettling(status([folder({ state: 'loading', files: null, indexedFiles: null, chunks: null, deepCoverage: null })])), true);
    assert.equal(isSettling(status([folder()])), false);
  });
});
