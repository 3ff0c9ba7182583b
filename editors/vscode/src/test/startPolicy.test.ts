import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { documentSelector, EXTENSIONS } from '../languages';
import { indexFolderName, indexPath, isProject, startAtStartup } from '../startPolicy';

const linux = { platform: 'linux', env: {}, home: '/home/me' };

describe('startPolicy', () => {
  it('names index folders as the server does', () => {
    // sha256('/home/me/src/my proj')[:12], name with unsafe characters replaced
    const name = indexFolderName('/home/me/src/my proj', 'linux');
    assert.match(name, /^my_proj-[0-9a-f]{12}$/);
    assert.equal(indexPath('/w', { ...linux, env: { XDG_CACHE_HOME: '/c' } }), `/c/mose/indexes/${indexFolderName('/w', 'linux')}`);
    assert.equal(indexPath('/w', { ...linux, indexDir: '/idx' }), `/idx/${indexFolderName('/w', 'linux')}`);
    assert.equal(indexFolderName('/', 'linux').split('-')[0], 'root');
  });

  it('starts at start-up only for projects', () => {
    const files = new Set(['/repo/.git', '/ignored/.moseignore', `${indexPath('/indexed', linux)}/store.sqlite3`]);
    const exists = (f: string) => files.has(f);
    assert.equal(isProject('/repo', linux, exists), true);
    assert.equal(isProject('/ignored', linux, exists), true);
    assert.equal(isProject('/indexed', linux, exists), true);
    assert.equal(isProject('/home/me/Downloads', linux, exists), false);
    assert.equal(startAtStartup(['/home/me/Downloads', '/repo'], linux, exists), true);
    assert.equal(startAtStartup(['/home/me/Downloads'], linux, exists), false);
    assert.equal(startAtStartup([], linux, exists), false);
  });

  it('selects only files the server indexes', () => {
    const [byExt, byName] = documentSelector();
    assert.equal(byExt.scheme, 'file');
    assert.ok(byExt.pattern.startsWith('**/*.{py,pyi,'));
    assert.ok(EXTENSIONS.includes('.rs') && !EXTENSIONS.includes('.png'));
    assert.ok(byName.pattern.includes('Dockerfile'));
  });
});
