// Results in VS Code's References view (the built-in references-view extension's `setInput`
// API), grouped by file; the peek view when that extension is not there.

import * as vscode from 'vscode';

import type { Result } from './protocol';
import { formatScore, lineSpan } from './results';

/** The part of the references-view extension's API used here (its `SymbolTree`). */
interface SymbolTree {
  setInput(input: SymbolTreeInput): void;
}

interface SymbolTreeModel {
  message: string | undefined;
  provider: vscode.TreeDataProvider<Node>;
}

interface SymbolTreeInput {
  readonly contextValue: string;
  readonly title: string;
  readonly location: vscode.Location;
  resolve(): vscode.ProviderResult<SymbolTreeModel>;
  with(location: vscode.Location): SymbolTreeInput;
}

const EXTENSION_IDS = ['vscode.references-view', 'ms-vscode.references-view'];

export interface Hit {
  uri: vscode.Uri;
  range: vscode.Range;
  result: Result;
}

type Node = { file: vscode.Uri; label: string; hits: Hit[] } | { hit: Hit };

class Provider implements vscode.TreeDataProvider<Node> {
  private readonly files: Node[];

  constructor(hits: Hit[]) {
    const byFile = new Map<string, { file: vscode.Uri; label: string; hits: Hit[] }>();
    for (const hit of hits) {
      const key = hit.uri.toString();
      const group = byFile.get(key) ?? { file: hit.uri, label: hit.result.path, hits: [] };
      group.hits.push(hit);
      byFile.set(key, group);
    }
    this.files = [...byFile.values()];
  }

  getChildren(node?: Node): Node[] {
    if (node === undefined) {
      return this.files;
    }
    return 'hits' in node ? node.hits.map((hit) => ({ hit })) : [];
  }

  getTreeItem(node: Node): vscode.TreeItem {
    if ('file' in node) {
      const item = new vscode.TreeItem(node.file, vscode.TreeItemCollapsibleState.Expanded);
      item.description = `${node.label} (${node.hits.length})`;
      return item;
    }
    const { hit } = node;
    const name = hit.result.symbol ?? `line ${hit.range.start.line + 1}`;
    const item = new vscode.TreeItem(name, vscode.TreeItemCollapsibleState.None);
    item.description = `${formatScore(hit.result.score)}  ${lineSpan(hit.result.range)}`;
    item.tooltip = hit.result.snippet;
    item.command = {
      command: 'vscode.open',
      title: 'Open',
      arguments: [hit.uri, { selection: new vscode.Range(hit.range.start, hit.range.start) }],
    };
    return item;
  }
}

class Input implements SymbolTreeInput {
  readonly contextValue = 'mose.results';

  constructor(
    readonly title: string,
    readonly location: vscode.Location,
    private readonly hits: Hit[],
  ) {}

  resolve(): SymbolTreeModel {
    return { message: `${this.hits.length} results`, provider: new Provider(this.hits) };
  }

  with(location: vscode.Location): SymbolTreeInput {
    return new Input(this.title, location, this.hits);
  }
}

/** Show hits in the References view, or in the peek view at `anchor`. */
export async function showInReferences(
  title: string,
  hits: Hit[],
  anchor: vscode.Location,
  log: (message: string) => void,
): Promise<void> {
  for (const id of EXTENSION_IDS) {
    const ext = vscode.extensions.getExtension<SymbolTree>(id);
    if (ext === undefined) {
      continue;
    }
    try {
      const api = await ext.activate();
      if (typeof api?.setInput === 'function') {
        api.setInput(new Input(title, anchor, hits));
        return;
      }
    } catch (err) {
      log(`The References view is unavailable (${String(err)}); showing a peek view instead.`);
    }
  }
  if (vscode.window.activeTextEditor?.document.uri.toString() !== anchor.uri.toString()) {
    await vscode.window.showTextDocument(anchor.uri, { selection: anchor.range });
  }
  await vscode.commands.executeCommand(
    'editor.action.showReferences',
    anchor.uri,
    anchor.range.start,
    hits.map((h) => new vscode.Location(h.uri, h.range)),
  );
}
