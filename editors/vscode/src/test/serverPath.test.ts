import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { findOnPath, INSTALL_COMMAND, type ResolveContext, resolveServer, serverArgs, venvCandidates } from '../serverPath';

function ctx(executables: string[], over: Partial<ResolveContext> = {}): ResolveContext {
  const set = new Set(executables);
  return {
    platform: 'linux',
    env: { PATH: '/usr/local/bin:/usr/bin' },
    home: '/home/me',
    folders: ['/home/me/proj', '/home/me/other'],
    isExecutable: (f) => set.has(f),
    ...over,
  };
}

describe('resolveServer', () => {
  it('prefers the workspace .venv over PATH', () => {
    const r = resolveServer(undefined, ctx(['/home/me/proj/.venv/bin/mose', '/usr/bin/mose']));
    assert.deepEqual(r, { ok: true, command: '/home/me/proj/.venv/bin/mose', source: 'venv' });
  });

  it('tries venv/ and later folders before PATH', () => {
    assert.deepEqual(resolveServer('', ctx(['/home/me/proj/venv/bin/mose'])), {
      ok: true,
      command: '/home/me/proj/venv/bin/mose',
      source: 'venv',
    });
    assert.deepEqual(resolveServer('  ', ctx(['/home/me/other/.venv/bin/mose', '/usr/bin/mose'])), {
      ok: true,
      command: '/home/me/other/.venv/bin/mose',
      source: 'venv',
    });
  });

  it('falls back to PATH in order', () => {
    const r = resolveServer(undefined, ctx(['/usr/bin/mose', '/usr/local/bin/mose']));
    assert.deepEqual(r, { ok: true, command: '/usr/local/bin/mose', source: 'path' });
  });

  it('uses the setting: absolute, ~, ${workspaceFolder}, relative, bare name', () => {
    assert.equal(resolveServer('/opt/mose/bin/mose', ctx(['/opt/mose/bin/mose'])).ok, true);
    assert.deepEqual(resolveServer('~/.local/bin/mose', ctx(['/home/me/.local/bin/mose'])), {
      ok: true,
      command: '/home/me/.local/bin/mose',
      source: 'setting',
    });
    assert.deepEqual(resolveServer('${workspaceFolder}/tools/mose', ctx(['/home/me/proj/tools/mose'])), {
      ok: true,
      command: '/home/me/proj/tools/mose',
      source: 'setting',
    });
    assert.deepEqual(resolveServer('env/bin/mose', ctx(['/home/me/proj/env/bin/mose'])), {
      ok: true,
      command: '/home/me/proj/env/bin/mose',
      source: 'setting',
    });
    assert.deepEqual(resolveServer('mose-dev', ctx(['/usr/bin/mose-dev'])), {
      ok: true,
      command: '/usr/bin/mose-dev',
      source: 'setting',
    });
  });

  it('does not fall back when the configured path is wrong', () => {
    const r = resolveServer('/nope/mose', ctx(['/usr/bin/mose']));
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.match(r.message, /mose\.server\.path/);
      assert.deepEqual(r.tried, ['/nope/mose']);
    }
  });

  it('says how to install when nothing is found', () => {
    const r = resolveServer(undefined, ctx([]));
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.ok(r.message.includes(INSTALL_COMMAND), r.message);
      assert.equal(INSTALL_COMMAND, 'pipx install /path/to/mose');
      assert.ok(r.tried.includes('/home/me/proj/.venv/bin/mose'));
      assert.ok(r.tried.includes('/usr/bin/mose'));
    }
  });

  it('handles Windows: Scripts\\mose.exe, Path and PATHEXT', () => {
    const win = { platform: 'win32', env: { Path: 'C:\\Python\\Scripts;C:\\Windows', PATHEXT: '.COM;.EXE' }, home: 'C:\\Users\\me' };
    assert.deepEqual(venvCandidates('C:\\proj', 'win32'), ['C:\\proj\\.venv\\Scripts\\mose.exe', 'C:\\proj\\venv\\Scripts\\mose.exe']);
    assert.deepEqual(
      resolveServer(undefined, ctx(['C:\\proj\\venv\\Scripts\\mose.exe'], { ...win, folders: ['C:\\proj'] })),
      { ok: true, command: 'C:\\proj\\venv\\Scripts\\mose.exe', source: 'venv' },
    );
    assert.equal(
      findOnPath('mose', ctx(['C:\\Python\\Scripts\\mose.exe'], { ...win, folders: [] })),
      'C:\\Python\\Scripts\\mose.exe',
    );
  });
});

describe('serverArgs', () => {
  it('is serve plus the extra arguments', () => {
    assert.deepEqual(serverArgs(undefined), ['serve']);
    assert.deepEqual(serverArgs(['--log-level', 'debug']), ['serve', '--log-level', 'debug']);
  });
});
