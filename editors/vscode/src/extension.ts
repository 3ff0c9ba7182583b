// The VS Code side of mose: starts `mose serve`, forwards settings, and turns the server's
// commands into a search picker, a similar-code picker, references and a status bar item.
// Everything that can be tested without VS Code lives in the other modules.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  ResponseError,
  type ServerOptions,
} from 'vscode-languageclient/node';

import { searchArgs, similarArgs } from './args';
import { LatestQuery } from './debounce';
import type { Range as LspRange, SearchResponse, StatusResponse } from './protocol';
import { Command } from './protocol';
import { showInReferences } from './referencesView';
import { incompleteNote, type ResultItem, toItems } from './results';
import { INSTALL_COMMAND, resolveServer, serverArgs } from './serverPath';
import { documentSelector } from './languages';
import { configurationItems, didChangeConfigurationParams, expandPath, initializationOptions, needsRestart, type PathContext } from './settings';
import { startAtStartup } from './startPolicy';
import { isSettling, ProgressTracker, statusView } from './status';

let current: MoseExtension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  current = new MoseExtension(context);
  // Start now only for projects (a repository, a .moseignore, an existing index); any other
  // folder gets a server (and a first index) on the first mose command.
  const indexDir = config().get<string | null>('indexDir');
  const folders = (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file').map((f) => f.uri.fsPath);
  const ctx = {
    platform: process.platform,
    env: process.env,
    home: os.homedir(),
    indexDir: typeof indexDir === 'string' && indexDir.trim() !== '' ? expandPath(indexDir, pathContext()) : null,
  };
  if (startAtStartup(folders, ctx, (file) => fs.existsSync(file))) {
    await current.start();
  } else {
    current.idle();
  }
}

export async function deactivate(): Promise<void> {
  await current?.stop();
  current = undefined;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration('mose');
}

function pathContext(): PathContext {
  return { home: os.homedir(), workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

class MoseExtension implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private readonly output = vscode.window.createOutputChannel('MoSE', { log: true });
  private readonly statusItem = vscode.window.createStatusBarItem('mose.status', vscode.StatusBarAlignment.Right, 100);
  private readonly tracker = new ProgressTracker();
  private pollTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(context: vscode.ExtensionContext) {
    this.statusItem.name = 'MoSE';
    this.statusItem.command = 'mose.showStatus';
    this.statusItem.text = '$(search) mose';
    this.statusItem.show();
    context.subscriptions.push(
      this,
      this.output,
      this.statusItem,
      vscode.commands.registerCommand('mose.searchWorkspace', () => this.searchWorkspace()),
      vscode.commands.registerCommand('mose.findSimilar', () => this.findSimilar('pick')),
      vscode.commands.registerCommand('mose.findSimilarReferences', () => this.findSimilar('references')),
      vscode.commands.registerCommand('mose.showStatus', () => this.showStatus()),
      vscode.commands.registerCommand('mose.reindexWorkspace', () => this.reindex(false)),
      vscode.commands.registerCommand('mose.restart', () => this.restart()),
      vscode.workspace.onDidChangeConfiguration((e) => this.configurationChanged(e)),
    );
  }

  dispose(): void {
    void this.stop();
  }

  // ---- server lifecycle ----

  async start(): Promise<void> {
    const resolution = resolveServer(config().get<string>('server.path'), {
      platform: process.platform,
      env: process.env,
      home: os.homedir(),
      folders: (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath),
      isExecutable,
    });
    if (!resolution.ok) {
      this.output.appendLine(`${resolution.message}\nTried:\n  ${resolution.tried.join('\n  ')}`);
      this.setStatus({ text: '$(error) mose', tooltip: resolution.message, severity: 'error' });
      const copy = 'Copy Install Command';
      const settings = 'Open Settings';
      void vscode.window.showErrorMessage(resolution.message, copy, settings).then(async (choice) => {
        if (choice === copy) {
          await vscode.env.clipboard.writeText(INSTALL_COMMAND);
        } else if (choice === settings) {
          await vscode.commands.executeCommand('workbench.action.openSettings', 'mose.server.path');
        }
      });
      return;
    }
    const serverOptions: ServerOptions = {
      command: resolution.command,
      args: serverArgs(config().get<string[]>('server.args')),
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: documentSelector(),
      outputChannel: this.output,
      initializationOptions: () => initializationOptions(config(), pathContext()),
      middleware: {
        workspace: {
          configuration: async (params, token, next) => {
            const base = await next(params, token);
            if (base instanceof ResponseError) {
              return base;
            }
            return configurationItems(params.items, config(), pathContext(), (i) => base[i]);
          },
        },
        handleWorkDoneProgress: (token, params, next) => {
          if (params.kind === 'begin') {
            this.tracker.begin(token, params.title, params.percentage, params.message);
          } else if (params.kind === 'report') {
            this.tracker.report(token, params.percentage, params.message);
          } else {
            this.tracker.end(token);
          }
          this.showProgressOrState();
          next(token, params);
        },
      },
    };
    this.output.appendLine(`Starting ${resolution.command} ${serverOptions.args?.join(' ') ?? ''} (${resolution.source})`);
    const client = new LanguageClient('mose', 'MoSE', serverOptions, clientOptions);
    this.client = client;
    try {
      await client.start();
    } catch (err) {
      this.setStatus({ text: '$(error) mose', tooltip: `The mose server failed to start: ${errorText(err)}`, severity: 'error' });
      void vscode.window.showErrorMessage(`The mose server failed to start: ${errorText(err)}`, 'Show Output').then((c) => {
        if (c !== undefined) {
          this.output.show();
        }
      });
      return;
    }
    void this.refreshStatus();
  }

  async stop(): Promise<void> {
    if (this.pollTimer !== undefined) {
      clearTimeout(this.pollTimer);
      this.pollTimer = undefined;
    }
    const client = this.client;
    this.client = undefined;
    if (client !== undefined) {
      try {
        await client.stop();
      } catch (err) {
        this.output.appendLine(`Stopping the server: ${errorText(err)}`);
      }
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  private configurationChanged(e: vscode.ConfigurationChangeEvent): void {
    if (!e.affectsConfiguration('mose')) {
      return;
    }
    if (needsRestart((section) => e.affectsConfiguration(section))) {
      if (this.client !== undefined) {
        void this.restart();
      }
      return;
    }
    const client = this.client;
    if (client?.isRunning()) {
      void client.sendNotification(
        DidChangeConfigurationNotification.type,
        didChangeConfigurationParams(config(), pathContext()),
      );
      void this.refreshStatus();
    }
  }

  /** The status bar before the server runs (a folder that is not a project). */
  idle(): void {
    this.setStatus({ text: '$(search) mose', tooltip: 'mose starts on the first MoSE command in this window.', severity: 'ok' });
  }

  /** Start the server if it is not running yet (the first mose command in a window that
   *  did not start it at start-up). */
  private async ensureStarted(): Promise<void> {
    if (this.client === undefined) {
      await this.start();
    }
  }

  private async execute<T>(command: string, arg: object | undefined, token?: vscode.CancellationToken): Promise<T> {
    await this.ensureStarted();
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      throw new Error("The mose server is not running (see 'MoSE: Restart Server' and the MoSE output).");
    }
    return client.sendRequest(
      ExecuteCommandRequest.type,
      { command, arguments: arg === undefined ? [] : [arg] },
      token,
    ) as Promise<T>;
  }

  // ---- status bar ----

  private setStatus(view: { text: string; tooltip: string; severity: 'ok' | 'warning' | 'error' }): void {
    this.statusItem.text = view.text;
    this.statusItem.tooltip = `${view.tooltip}\n\nClick for the index status.`;
    this.statusItem.backgroundColor =
      view.severity === 'error'
        ? new vscode.ThemeColor('statusBarItem.errorBackground')
        : view.severity === 'warning'
          ? new vscode.ThemeColor('statusBarItem.warningBackground')
          : undefined;
  }

  private showProgressOrState(): void {
    const view = this.tracker.view();
    if (view !== undefined) {
      this.setStatus(view);
    } else {
      void this.refreshStatus();
    }
  }

  private async refreshStatus(): Promise<void> {
    if (this.pollTimer !== undefined) {
      clearTimeout(this.pollTimer);
      this.pollTimer = undefined;
    }
    if (this.client === undefined) {
      return; // not started (yet): a status poll never starts the server
    }
    let status: StatusResponse;
    try {
      status = await this.execute<StatusResponse>(Command.status, undefined);
    } catch (err) {
      this.setStatus({ text: '$(error) mose', tooltip: errorText(err), severity: 'error' });
      return;
    }
    if (!this.tracker.busy) {
      this.setStatus(statusView(status));
    }
    if (isSettling(status)) {
      this.pollTimer = setTimeout(() => void this.refreshStatus(), 2000);
    }
  }

  private async showStatus(): Promise<void> {
    let status: StatusResponse;
    try {
      status = await this.execute<StatusResponse>(Command.status, undefined);
    } catch (err) {
      const restart = 'Restart Server';
      const choice = await vscode.window.showErrorMessage(errorText(err), restart, 'Show Output');
      if (choice === restart) {
        await this.restart();
      } else if (choice !== undefined) {
        this.output.show();
      }
      return;
    }
    const view = statusView(status);
    this.setStatus(view);
    type Action = vscode.QuickPickItem & { run?: () => unknown };
    const items: Action[] = status.folders.map((f) => ({
      label: `$(folder) ${f.name}`,
      description: f.state,
      detail:
        f.state === 'error'
          ? f.error ?? ''
          : `${f.indexedFiles ?? '-'} / ${f.files ?? '-'} files, ${f.chunks ?? '-'} chunks, deep vectors ${
              f.deepCoverage === null ? '-' : `${Math.round(f.deepCoverage * 100)}%`
            }${f.model ? `, model ${f.model.name} ${f.model.version}` : ''}`,
    }));
    items.push(
      ...status.warnings.map((w) => ({ label: `$(warning) ${w}` })),
      { label: '', kind: vscode.QuickPickItemKind.Separator },
      { label: '$(refresh) Reindex', description: 'scan again for changed files', run: () => this.reindex(false) },
      { label: '$(trash) Rebuild index', description: 'delete and build from nothing', run: () => this.reindex(true) },
      { label: '$(debug-restart) Restart server', run: () => this.restart() },
      { label: '$(output) Show output', run: () => this.output.show() },
    );
    const choice = await vscode.window.showQuickPick(items, { title: `mose ${status.version}`, matchOnDetail: true });
    await choice?.run?.();
  }

  private async reindex(rebuild: boolean): Promise<void> {
    const folders = vscode.workspace.workspaceFolders ?? [];
    let arg: { folder?: string; rebuild?: boolean } | undefined;
    if (folders.length > 1) {
      type FolderItem = vscode.QuickPickItem & { folder?: vscode.WorkspaceFolder };
      const all: FolderItem = { label: 'All folders' };
      const picked = await vscode.window.showQuickPick<FolderItem>([all, ...folders.map((f) => ({ label: f.name, folder: f }))], {
        title: rebuild ? 'Rebuild the index of' : 'Reindex',
      });
      if (picked === undefined) {
        return;
      }
      if (picked.folder !== undefined) {
        const uri = picked.folder.uri;
        arg = { folder: this.client?.code2ProtocolConverter.asUri(uri) ?? uri.toString() };
      }
    }
    if (rebuild) {
      arg = { ...arg, rebuild: true };
    }
    try {
      const reply = await this.execute<{ folders: { uri: string; lastScan: { filesIndexed?: number } | null }[] }>(
        Command.reindex,
        arg,
      );
      const indexed = reply.folders.reduce((n, f) => n + (f.lastScan?.filesIndexed ?? 0), 0);
      void vscode.window.showInformationMessage(`mose: ${rebuild ? 'rebuilt' : 'reindexed'} (${indexed} files indexed).`);
    } catch (err) {
      void vscode.window.showErrorMessage(`mose: ${errorText(err)}`);
    }
    void this.refreshStatus();
  }

  // ---- search and similar code ----

  private folderNames(): Map<string, string> {
    const names = new Map<string, string>();
    for (const f of vscode.workspace.workspaceFolders ?? []) {
      names.set(this.client?.code2ProtocolConverter.asUri(f.uri) ?? f.uri.toString(), f.name);
    }
    return names;
  }

  private toUri(uri: string): vscode.Uri {
    return this.client?.protocol2CodeConverter.asUri(uri) ?? vscode.Uri.parse(uri);
  }

  private toRange(range: LspRange): vscode.Range {
    return new vscode.Range(range.start.line, range.start.character, range.end.line, range.end.character);
  }

  private async open(item: ResultItem, preview: boolean): Promise<void> {
    const range = this.toRange(item.range);
    await vscode.window.showTextDocument(this.toUri(item.uri), {
      selection: new vscode.Range(range.start, range.start),
      preview,
      preserveFocus: preview,
    });
    const editor = vscode.window.activeTextEditor;
    editor?.revealRange(range, vscode.TextEditorRevealType.InCenterIfOutsideViewport);
  }

  private async showReferences(title: string, response: SearchResponse): Promise<void> {
    const hits = response.results.map((result) => ({ uri: this.toUri(result.uri), range: this.toRange(result.range), result }));
    if (hits.length === 0) {
      return;
    }
    const editor = vscode.window.activeTextEditor;
    const anchor =
      editor !== undefined && editor.document.uri.scheme === 'file'
        ? new vscode.Location(editor.document.uri, editor.selection.active)
        : new vscode.Location(hits[0].uri, hits[0].range.start);
    await showInReferences(title, hits, anchor, (message) => this.output.warn(message));
  }

  /**
   * A result picker that previews the active item. With `initial`, it shows those results;
   * otherwise it queries mose.search as the user types.
   */
  private picker(title: string, initial?: SearchResponse): void {
    const qp = vscode.window.createQuickPick<ResultItem>();
    const referencesButton: vscode.QuickInputButton = {
      iconPath: new vscode.ThemeIcon('references'),
      tooltip: 'Show the results in the references view',
    };
    const original = vscode.window.activeTextEditor;
    let response: SearchResponse | undefined = initial;
    let accepted = false;
    qp.title = title;
    qp.matchOnDescription = false;
    qp.matchOnDetail = false;
    qp.buttons = [referencesButton];
    const show = (value: SearchResponse): void => {
      response = value;
      const names = this.folderNames();
      qp.items = toItems(value, { folderNames: names });
      const note = incompleteNote(value, names);
      qp.title = note === undefined ? title : `${title} (${note})`;
    };
    const latest = new LatestQuery<SearchResponse>(
      config().get<number>('search.debounceMs') ?? 250,
      (query, signal) => {
        const cts = new vscode.CancellationTokenSource();
        signal.addEventListener('abort', () => cts.cancel());
        const arg = searchArgs(query);
        return arg === undefined
          ? Promise.resolve({ results: [], incomplete: [] })
          : this.execute<SearchResponse>(Command.search, arg, cts.token).finally(() => cts.dispose());
      },
      {
        busy: (on) => {
          qp.busy = on;
        },
        result: (_query, value) => show(value),
        error: (_query, err) => {
          qp.items = [];
          qp.title = `${title}: ${errorText(err)}`;
        },
      },
    );
    if (initial !== undefined) {
      show(initial);
      qp.placeholder = 'Similar code, best first';
    } else {
      qp.placeholder = 'Describe the code you are looking for, or paste a snippet';
      qp.onDidChangeValue((value) => latest.update(value));
    }
    qp.onDidChangeActive((items) => {
      if (items[0] !== undefined) {
        void this.open(items[0], true);
      }
    });
    qp.onDidAccept(() => {
      const item = qp.selectedItems[0] ?? qp.activeItems[0];
      if (item !== undefined) {
        accepted = true;
        qp.hide();
        void this.open(item, false);
      }
    });
    qp.onDidTriggerButton((button) => {
      if (button === referencesButton && response !== undefined) {
        const value = response;
        accepted = true;
        qp.hide();
        void this.showReferences(qp.title ?? title, value);
      }
    });
    qp.onDidHide(() => {
      latest.cancel();
      qp.dispose();
      if (!accepted && original !== undefined) {
        void vscode.window.showTextDocument(original.document, {
          viewColumn: original.viewColumn,
          selection: original.selection,
        });
      }
    });
    qp.show();
  }

  private searchWorkspace(): void {
    this.picker('MoSE: Search Workspace');
  }

  private async findSimilar(mode: 'pick' | 'references'): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (editor === undefined || editor.document.uri.scheme !== 'file') {
      void vscode.window.showInformationMessage('mose: open a file of the workspace to find code similar to it.');
      return;
    }
    const s = editor.selection;
    const arg = similarArgs({
      uri: this.client?.code2ProtocolConverter.asUri(editor.document.uri) ?? editor.document.uri.toString(),
      selection: {
        start: { line: s.start.line, character: s.start.character },
        end: { line: s.end.line, character: s.end.character },
      },
      cursor: { line: s.active.line, character: s.active.character },
    });
    let response: SearchResponse;
    try {
      response = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Window, title: 'mose: finding similar code' },
        (_progress, token) => this.execute<SearchResponse>(Command.similar, arg, token),
      );
    } catch (err) {
      void vscode.window.showErrorMessage(`mose: ${errorText(err)}`);
      return;
    }
    if (response.results.length === 0) {
      const note = incompleteNote(response, this.folderNames());
      void vscode.window.showInformationMessage(`mose: no similar code found.${note ? ` ${note}` : ''}`);
      return;
    }
    if (mode === 'references') {
      await this.showReferences('MoSE: Similar Code', response);
    } else {
      this.picker('MoSE: Similar Code', response);
    }
  }
}
