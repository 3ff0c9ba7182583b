import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import {
  type ConfigReader,
  configurationItems,
  didChangeConfigurationParams,
  expandPath,
  initializationOptions,
  needsRestart,
  SERVER_KEYS,
  serverSettings,
} from '../settings';
import { packageDefaults, readerFor } from './config';

const ctx = { home: '/home/me', workspaceFolder: '/home/me/proj' };

describe('package.json settings', () => {
  it('mirror every server setting under mose.*', () => {
    const defaults = packageDefaults();
    for (const key of SERVER_KEYS) {
      assert.ok(`mose.${key}` in defaults, `package.json lacks mose.${key}`);
    }
    for (const key of ['mose.server.path', 'mose.server.args', 'mose.trace.server']) {
      assert.ok(key in defaults, `package.json lacks ${key}`);
    }
  });

  it('declare the commands the extension registers', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
    const declared = pkg.contributes.commands.map((c: { command: string }) => c.command).sort();
    const source = fs.readFileSync(path.join(__dirname, '..', '..', 'src', 'extension.ts'), 'utf8');
    const registered = [...source.matchAll(/registerCommand\('([^']+)'/g)].map((m) => m[1]).sort();
    assert.deepEqual(declared, registered);
    // The server's own command ids are registered by the language client: ours must differ.
    for (const id of ['mose.search', 'mose.similar', 'mose.status', 'mose.reindex']) {
      assert.ok(!declared.includes(id), `${id} collides with a server command`);
    }
  });
});

describe('serverSettings', () => {
  it('sends the defaults: paths as null, the unset secret list left out, no client keys', () => {
    const settings = serverSettings(readerFor(), ctx);
    assert.equal(settings.model, null);
    assert.equal(settings.indexDir, null);
    assert.equal(settings.threads, 0);
    assert.equal(settings.limit, 10);
    assert.equal(settings.watcher, 'auto');
    assert.ok(!('secretPatterns' in settings));
    assert.ok(!('server' in settings) && !('trace' in settings) && !('search' in settings));
    assert.deepEqual(Object.keys(settings).filter((k) => !(SERVER_KEYS as readonly string[]).includes(k)), []);
  });

  it('expands ~ and ${workspaceFolder} in paths', () => {
    const settings = serverSettings(readerFor({ model: '~/models/mose', indexDir: '${workspaceFolder}/.mose' }), ctx);
    assert.equal(settings.model, '/home/me/models/mose');
    assert.equal(settings.indexDir, '/home/me/proj/.mose');
    assert.equal(expandPath('${userHome}/x', ctx), '/home/me/x');
  });

  it('passes user values through for the server to validate', () => {
    const settings = serverSettings(readerFor({ limit: 25, exclude: ['vendor/**'], secretPatterns: ['*.pem'] }), ctx);
    assert.equal(settings.limit, 25);
    assert.deepEqual(settings.exclude, ['vendor/**']);
    assert.deepEqual(settings.secretPatterns, ['*.pem']);
  });

  it('wraps settings for initialize and didChangeConfiguration', () => {
    const reader: ConfigReader = readerFor({ limit: 3 });
    assert.equal(initializationOptions(reader, ctx).mose.limit, 3);
    assert.equal(initializationOptions(reader, ctx).mose.notifications, true); // opt-in to mose/*
    assert.equal('notifications' in didChangeConfigurationParams(reader, ctx).settings.mose, false);
    assert.equal(didChangeConfigurationParams(reader, ctx).settings.mose.limit, 3);
  });

  it('answers workspace/configuration for mose and leaves other sections alone', () => {
    const answer = configurationItems(
      [{ section: 'mose' }, { section: 'mose.limit' }, { section: 'editor' }, {}],
      readerFor({ limit: 7 }),
      ctx,
      (i) => `fallback ${i}`,
    );
    assert.equal((answer[0] as Record<string, unknown>).limit, 7);
    assert.equal(answer[1], 7);
    assert.equal(answer[2], 'fallback 2');
    assert.equal(answer[3], 'fallback 3');
  });

  it('restarts only for server launch settings', () => {
    assert.equal(needsRestart((s) => s === 'mose.server'), true);
    assert.equal(needsRestart((s) => s === 'mose.limit'), false);
  });
});
