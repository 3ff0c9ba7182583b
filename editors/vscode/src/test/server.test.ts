// The requests the extension sends, sent by a real LSP client (vscode-jsonrpc +
// vscode-languageserver-protocol) to the real `mose serve`, with the extension's own
// settings, argument builders and result mapping.
//
// Environment:
//   MOSE_SERVER_CMD        the server command line (a JSON array, or words split on spaces);
//                          default: the extension's own resolution (workspace .venv, then
//                          PATH) from the repository root, plus `serve`
//   MOSE_MODEL             model directory (sent as the mose.model setting); default: the
//                          server's embedded model
//   MOSE_TEST_WORKSPACE    a workspace with the planted functions (pkg/strings.py
//                          levenshtein_distance, web/timing.js debounce), copied for the test;
//                          default: a small one written here
//   MOSE_SERVER_TEST_REQUIRED=1  fail instead of skipping when no server is found

import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import {
  ConfigurationRequest,
  createMessageConnection,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  ExitNotification,
  InitializedNotification,
  InitializeRequest,
  LogMessageNotification,
  type MessageConnection,
  RegistrationRequest,
  ShowMessageNotification,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
  WorkDoneProgressCreateRequest,
} from 'vscode-languageserver-protocol/node';

import { searchArgs, similarArgs } from '../args';
import type { SearchResponse, StatusResponse } from '../protocol';
import { Command } from '../protocol';
import { toItems, toLocations } from '../results';
import { resolveServer, serverArgs } from '../serverPath';
import { configurationItems, initializationOptions, SERVER_KEYS } from '../settings';
import { readerFor } from './config';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..');

function serverCommand(): string[] | undefined {
  const raw = process.env.MOSE_SERVER_CMD?.trim();
  if (raw) {
    return raw.startsWith('[') ? (JSON.parse(raw) as string[]) : raw.split(/\s+/);
  }
  const found = resolveServer(undefined, {
    platform: process.platform,
    env: process.env,
    home: os.homedir(),
    folders: [REPO_ROOT],
    isExecutable: (f) => {
      try {
        fs.accessSync(f, fs.constants.X_OK);
        return fs.statSync(f).isFile();
      } catch {
        return false;
      }
    },
  });
  return found.ok ? [found.command, ...serverArgs([])] : undefined;
}

const PLANTED_PY = `def levenshtein_distance(left: str, right: str) -> int:
    """Number of single-character edits that turn one string into the other."""
    previous = list(range(len(right) + 1))
    for i, a in enumerate(left, 1):
        current = [i]
        for j, b in enumerate(right, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]
`;

const PLANTED_JS = `/**
 * Debounce a function: call it once the caller has been quiet for \`wait\` milliseconds.
 */
export function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}
`;

const OTHER_PY = `import json
import os


def read_config(path):
    """Load a JSON configuration file, or an empty dict when it does not exist."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def fibonacci(n):
    """The n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Stack:
    """A last-in first-out stack."""

    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()
`;

const OTHER_JS = `export function chunk(array, size) {
  const out = [];
  for (let i = 0; i < array.length; i += size) {
    out.push(array.slice(i, i + size));
  }
  return out;
}

export async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(\`HTTP \${response.status}\`);
  }
  return response.json();
}
`;

/** An unsaved buffer: another edit-distance implementation. */
const EDIT_DISTANCE_VARIANT = `def edit_distance(a, b):
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        dp[i][0] = i
    for j in range(len(b) + 1):
        dp[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            dp[i][j] = min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + cost)
    return dp[len(a)][len(b)]
`;

function makeWorkspace(dir: string): void {
  const source = process.env.MOSE_TEST_WORKSPACE;
  if (source) {
    fs.cpSync(source, dir, { recursive: true });
    return;
  }
  const files: Record<string, string> = {
    'pkg/strings.py': PLANTED_PY,
    'pkg/misc.py': OTHER_PY,
    'web/timing.js': PLANTED_JS,
    'web/util.js': OTHER_JS,
  };
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), text);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const command = serverCommand();
const required = process.env.MOSE_SERVER_TEST_REQUIRED === '1';
const skip = command === undefined && !required ? 'no mose server found (set MOSE_SERVER_CMD)' : false;

describe('the extension against the real mose server', { skip }, () => {
  let tmp: string;
  let workspace: string;
  let folderUri: string;
  let proc: ChildProcess;
  let connection: MessageConnection;
  const stderr: string[] = [];
  const messages: string[] = [];
  const progressTitles: string[] = [];
  const progressEnded: string[] = [];
  let configurationPulls = 0;
  // The extension's settings: package.json defaults plus what a user would set.
  const userSettings: Record<string, unknown> = { indexDir: '', threads: 2 };
  let reader = readerFor(userSettings);
  const pathCtx = { home: os.homedir() };

  const execute = async <T>(name: string, arg?: object, ms = 60_000): Promise<T> =>
    withTimeout(
      connection.sendRequest(ExecuteCommandRequest.type, { command: name, arguments: arg === undefined ? [] : [arg] }) as Promise<T>,
      ms,
      name,
    );

  before(
    async () => {
      assert.ok(command !== undefined, 'MOSE_SERVER_TEST_REQUIRED=1 but no mose server was found: set MOSE_SERVER_CMD');
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mose-vscode-'));
      workspace = path.join(tmp, 'ws');
      fs.mkdirSync(workspace);
      makeWorkspace(workspace);
      fs.writeFileSync(path.join(workspace, 'pkg', 'scratch.py'), '# scratch\n');
      folderUri = pathToFileURL(workspace).href;
      userSettings.indexDir = path.join(tmp, 'index');
      if (process.env.MOSE_MODEL) {
        userSettings.model = process.env.MOSE_MODEL;
      }
      reader = readerFor(userSettings);

      proc = spawn(command[0], command.slice(1), { cwd: workspace, stdio: ['pipe', 'pipe', 'pipe'] });
      proc.stderr?.on('data', (d: Buffer) => stderr.push(d.toString()));
      connection = createMessageConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
      connection.onRequest(WorkDoneProgressCreateRequest.type, () => undefined);
      connection.onRequest(RegistrationRequest.type, () => undefined);
      connection.onRequest(ConfigurationRequest.type, (params) => {
        configurationPulls++;
        return configurationItems(params.items, reader, pathCtx, () => null);
      });
      connection.onNotification(ShowMessageNotification.type, (p) => {
        messages.push(p.message);
      });
      connection.onNotification(LogMessageNotification.type, () => undefined);
      connection.onUnhandledProgress((p) => {
        const value = p.value as { kind?: string; title?: string };
        if (value.kind === 'begin') {
          progressTitles.push(value.title ?? '');
        } else if (value.kind === 'end') {
          progressEnded.push(String(p.token));
        }
      });
      connection.listen();

      const init = await withTimeout(
        connection.sendRequest(InitializeRequest.type, {
          processId: process.pid,
          clientInfo: { name: 'mose-vscode-test' },
          rootUri: folderUri,
          workspaceFolders: [{ uri: folderUri, name: 'ws' }],
          initializationOptions: initializationOptions(reader, pathCtx),
          capabilities: {
            window: { workDoneProgress: true, showMessage: {} },
            workspace: {
              configuration: true,
              workspaceFolders: true,
              didChangeConfiguration: { dynamicRegistration: true },
              didChangeWatchedFiles: { dynamicRegistration: true },
              executeCommand: { dynamicRegistration: true },
            },
            textDocument: { synchronization: { dynamicRegistration: true, didSave: true } },
          },
        }),
        30_000,
        'initialize',
      );
      const commands = init.capabilities.executeCommandProvider?.commands ?? [];
      for (const name of Object.values(Command)) {
        assert.ok(commands.includes(name), `server does not advertise ${name}: ${commands.join(', ')}`);
      }
      await connection.sendNotification(InitializedNotification.type, {});

      const deadline = Date.now() + 240_000;
      for (;;) {
        const status = await execute<StatusResponse>(Command.status);
        const states = status.folders.map((f) => f.state);
        if (states.length > 0 && states.every((s) => s === 'ready')) {
          break;
        }
        assert.ok(!states.includes('error'), `indexing failed: ${JSON.stringify(status.folders)}`);
        assert.ok(Date.now() < deadline, `index not ready in time: ${JSON.stringify(states)}\n${stderr.join('')}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    },
    { timeout: 300_000 },
  );

  after(
    async () => {
      if (connection !== undefined) {
        try {
          await withTimeout(connection.sendRequest(ShutdownRequest.type), 30_000, 'shutdown');
          await connection.sendNotification(ExitNotification.type);
        } catch (err) {
          proc?.kill();
          throw err;
        }
        const code = await withTimeout(
          new Promise<number | null>((resolve) => {
            if (proc.exitCode !== null) {
              resolve(proc.exitCode);
            } else {
              proc.on('exit', (c) => resolve(c));
            }
          }),
          15_000,
          'exit',
        ).catch(() => {
          proc.kill();
          return -1;
        });
        connection.dispose();
        assert.equal(code, 0, `server exit code ${code}\n${stderr.join('').slice(-3000)}`);
      }
      if (tmp !== undefined) {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    },
    { timeout: 60_000 },
  );

  it('takes the extension settings without warnings and reports indexing progress', async () => {
    const status = await execute<StatusResponse>(Command.status);
    assert.deepEqual(status.warnings, [], 'the extension defaults should all be valid server settings');
    assert.deepEqual(messages.filter((m) => /invalid|unknown/i.test(m)), []);
    const sent = initializationOptions(reader, pathCtx).mose;
    for (const key of SERVER_KEYS) {
      if (key in sent && key !== 'model' && key !== 'indexDir') {
        assert.deepEqual(status.settings[key], sent[key], `setting ${key}`);
      }
    }
    assert.ok(configurationPulls >= 1, 'the server should pull the mose section');
    assert.equal(status.folders.length, 1);
    const [folder] = status.folders;
    assert.equal(folder.uri, folderUri);
    assert.ok((folder.chunks ?? 0) > 0, `no chunks: ${JSON.stringify(folder)}`);
    assert.ok(
      progressTitles.some((t) => t.startsWith('mose: indexing')),
      `no indexing progress seen: ${JSON.stringify(progressTitles)}`,
    );
  });

  it('MoSE: Search Workspace finds the planted functions', async () => {
    const arg = searchArgs('  edit distance between two strings ');
    assert.ok(arg !== undefined);
    const response = await execute<SearchResponse>(Command.search, arg);
    assert.deepEqual(response.incomplete, []);
    const items = toItems(response, { folderNames: new Map([[folderUri, 'ws']]) });
    assert.ok(items.length > 0);
    assert.equal(items[0].label, '$(symbol-function) levenshtein_distance', JSON.stringify(items.slice(0, 3), null, 1));
    assert.match(items[0].description, /^\d\.\d{3} {2}pkg\/strings\.py:1-9$/);
    const [first] = toLocations(response);
    assert.equal(first.uri, pathToFileURL(path.join(workspace, 'pkg', 'strings.py')).href);
    assert.deepEqual(first.range.start, { line: 0, character: 0 });

    const js = await execute<SearchResponse>(Command.search, searchArgs('wait until the caller stops calling before running a function'));
    const top3 = toItems(js).slice(0, 3).map((i) => i.label);
    assert.ok(top3.includes('$(symbol-function) debounce'), JSON.stringify(top3));
  });

  it('MoSE: Find Similar Code on a selection of an unsaved buffer finds levenshtein_distance', async () => {
    const uri = pathToFileURL(path.join(workspace, 'pkg', 'scratch.py')).href;
    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: 'python', version: 1, text: EDIT_DISTANCE_VARIANT },
    });
    const lines = EDIT_DISTANCE_VARIANT.split('\n');
    const last = lines.length - 2; // the last non-empty line
    const selection = { start: { line: 0, character: 0 }, end: { line: last, character: lines[last].length } };
    const arg = similarArgs({ uri, selection, cursor: selection.end });
    assert.deepEqual(arg.range, { start: { line: 0, character: 0 }, end: { line: last + 1, character: 0 } });
    const response = await execute<SearchResponse>(Command.similar, arg);
    const items = toItems(response);
    assert.ok(items.length > 0);
    assert.equal(items[0].label, '$(symbol-function) levenshtein_distance', JSON.stringify(items.slice(0, 3), null, 1));
    assert.equal(items[0].uri, pathToFileURL(path.join(workspace, 'pkg', 'strings.py')).href);
    assert.ok(!items.some((i) => i.uri === uri), 'the query chunk itself is left out');

    // The cursor inside the function (no selection) asks for the chunk around it.
    const cursor = { line: 5, character: 8 };
    const byCursor = similarArgs({ uri, selection: { start: cursor, end: cursor }, cursor });
    assert.deepEqual(byCursor, { uri, position: cursor });
    const around = await execute<SearchResponse>(Command.similar, byCursor);
    assert.equal(toItems(around)[0]?.label, '$(symbol-function) levenshtein_distance');
  });

  it('MoSE: Reindex Workspace answers with the scan', async () => {
    const reply = await execute<{ folders: { uri: string; lastScan: unknown }[] }>(Command.reindex, undefined, 120_000);
    assert.deepEqual(
      reply.folders.map((f) => f.uri),
      [folderUri],
    );
  });
});
