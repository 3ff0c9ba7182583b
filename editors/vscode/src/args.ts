// Editor state -> the arguments of mose.search / mose.similar (docs/protocol.md).

import type { Position, Range, SearchArgs, SimilarArgs } from './protocol';

/** What the "Find Similar Code" command reads from the active editor. */
export interface EditorState {
  /** The document's URI as a string (`vscode.Uri.toString()`). */
  uri: string;
  /** The primary selection (equal start and end when nothing is selected). */
  selection: Range;
  /** The cursor (the selection's active end). */
  cursor: Position;
}

function isEmpty(range: Range): boolean {
  return range.start.line === range.end.line && range.start.character === range.end.character;
}

/**
 * The whole lines a selection touches, as an end-exclusive range of full lines. A selection
 * ending at column 0 of a later line (a typical line-wise selection) does not take that line.
 */
export function selectedLines(selection: Range): Range {
  const [start, end] =
    selection.start.line < selection.end.line ||
    (selection.start.line === selection.end.line && selection.start.character <= selection.end.character)
      ? [selection.start, selection.end]
      : [selection.end, selection.start];
  const lastLine = end.character === 0 && end.line > start.line ? end.line - 1 : end.line;
  return { start: { line: start.line, character: 0 }, end: { line: lastLine + 1, character: 0 } };
}

/**
 * mose.similar's argument: the selected lines when there is a selection, otherwise the
 * cursor (the server takes the innermost chunk around it).
 */
export function similarArgs(state: EditorState, filters: { k?: number } = {}): SimilarArgs {
  const args: SimilarArgs = { uri: state.uri };
  if (isEmpty(state.selection)) {
    args.position = { line: state.cursor.line, character: state.cursor.character };
  } else {
    args.range = selectedLines(state.selection);
  }
  if (filters.k !== undefined) {
    args.k = filters.k;
  }
  return args;
}

/** mose.search's argument for what the user typed, or undefined for a blank query. */
export function searchArgs(query: string, filters: { k?: number } = {}): SearchArgs | undefined {
  const text = query.trim();
  if (text === '') {
    return undefined;
  }
  const args: SearchArgs = { query: text };
  if (filters.k !== undefined) {
    args.k = filters.k;
  }
  return args;
}
