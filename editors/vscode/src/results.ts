// Protocol results -> what the editor shows: quick pick items and locations.

import type { Range, Result, SearchResponse } from './protocol';

/** A quick pick row; `vscode.QuickPickItem` plus the place to open. */
export interface ResultItem {
  label: string;
  description: string;
  detail: string;
  alwaysShow: true;
  uri: string;
  range: Range;
  result: Result;
}

export interface Location {
  uri: string;
  range: Range;
}

const KIND_ICONS: Record<string, string> = {
  function: 'symbol-function',
  method: 'symbol-method',
  class: 'symbol-class',
  interface: 'symbol-interface',
  struct: 'symbol-structure',
  enum: 'symbol-enum',
  trait: 'symbol-interface',
  impl: 'symbol-class',
  record: 'symbol-structure',
  union: 'symbol-structure',
  type: 'symbol-type-parameter',
  macro: 'symbol-constant',
  property: 'symbol-property',
  module: 'symbol-module',
  window: 'symbol-snippet',
};

/** The 1-based line span of a result, e.g. "1-9" (its range is end-exclusive whole lines). */
export function lineSpan(range: Range): string {
  const first = range.start.line + 1;
  const last = Math.max(first, range.end.character === 0 ? range.end.line : range.end.line + 1);
  return first === last ? `${first}` : `${first}-${last}`;
}

export function formatScore(score: number): string {
  return score.toFixed(3);
}

/** The first non-blank line of a snippet, trimmed. */
export function firstLine(snippet: string): string {
  for (const line of snippet.split(/\r?\n/)) {
    if (line.trim() !== '') {
      return line.trim();
    }
  }
  return '';
}

export interface ItemOptions {
  /** Folder URI -> display name; the name prefixes paths when there are several folders. */
  folderNames?: ReadonlyMap<string, string>;
}

/** Quick pick items, best first: symbol (or path:line) as label, score and path, code line. */
export function toItems(response: SearchResponse, options: ItemOptions = {}): ResultItem[] {
  const names = options.folderNames;
  const multiRoot = names !== undefined && names.size > 1;
  return response.results.map((result) => {
    const where = `${result.path}:${lineSpan(result.range)}`;
    const folder = multiRoot ? names.get(result.folder) : undefined;
    const place = folder !== undefined ? `${folder} › ${where}` : where;
    const icon = KIND_ICONS[result.kind ?? ''] ?? 'symbol-misc';
    const name = result.symbol ?? `${result.path}:${result.range.start.line + 1}`;
    return {
      label: `$(${icon}) ${name}`,
      description: `${formatScore(result.score)}  ${place}`,
      detail: firstLine(result.snippet),
      alwaysShow: true,
      uri: result.uri,
      range: result.range,
      result,
    };
  });
}

/** Locations for the references view. */
export function toLocations(response: SearchResponse): Location[] {
  return response.results.map((r) => ({ uri: r.uri, range: r.range }));
}

/** A line telling that some folders are still being indexed, or undefined. */
export function incompleteNote(response: SearchResponse, folderNames?: ReadonlyMap<string, string>): string | undefined {
  if (response.incomplete.length === 0) {
    return undefined;
  }
  const names = response.incomplete.map((u) => folderNames?.get(u) ?? u);
  return `Still indexing ${names.join(', ')}: results may be missing.`;
}
