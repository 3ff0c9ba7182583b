import assert from 'node:assert/strict';
import { describe, it, mock } from 'node:test';

import { LatestQuery } from '../debounce';

describe('LatestQuery', () => {
  it('runs only the last query after the quiet period and drops stale answers', async () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const runs: string[] = [];
      const aborted: string[] = [];
      const shown: string[] = [];
      const pending = new Map<string, (v: string) => void>();
      const latest = new LatestQuery<string>(
        200,
        (q, signal) => {
          runs.push(q);
          signal.addEventListener('abort', () => aborted.push(q));
          return new Promise((resolve) => pending.set(q, resolve));
        },
        { busy: () => undefined, result: (_q, v) => shown.push(v), error: () => undefined },
      );
      latest.update('e');
      latest.update('ed');
      mock.timers.tick(199);
      assert.deepEqual(runs, []);
      latest.update('edit');
      mock.timers.tick(200);
      assert.deepEqual(runs, ['edit']);
      latest.update('edit distance'); // cancels 'edit' in flight
      assert.deepEqual(aborted, ['edit']);
      mock.timers.tick(200);
      pending.get('edit')?.('stale');
      pending.get('edit distance')?.('fresh');
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(runs, ['edit', 'edit distance']);
      assert.deepEqual(shown, ['fresh']);
    } finally {
      mock.timers.reset();
    }
  });

  it('reports errors of the latest query and clears busy', async () => {
    const busy: boolean[] = [];
    const errors: unknown[] = [];
    const latest = new LatestQuery<string>(0, () => Promise.reject(new Error('boom')), {
      busy: (on) => busy.push(on),
      result: () => undefined,
      error: (_q, e) => errors.push(e),
    });
    latest.update('x');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal((errors[0] as Error).message, 'boom');
    assert.deepEqual(busy, [true, false]);
  });
});
