// The mose server's protocol (docs/protocol.md): command names and the shapes of their
// arguments and results. Types only: no vscode import, so node tests can use it.

export const Command = {
  search: 'mose.search',
  similar: 'mose.similar',
  status: 'mose.status',
  reindex: 'mose.reindex',
} as const;

/** LSP position: 0-based line, `character` in UTF-16 code units. */
export interface Position {
  line: number;
  character: number;
}

/** LSP range (end-exclusive). */
export interface Range {
  start: Position;
  end: Position;
}

export interface QueryFilters {
  k?: number;
  languages?: string[];
  pathGlob?: string;
  folder?: string;
}

export interface SearchArgs extends QueryFilters {
  query: string;
  kind?: 'text' | 'code';
}

export interface SimilarArgs extends QueryFilters {
  uri: string;
  position?: Position;
  range?: Range;
}

export interface Result {
  uri: string;
  range: Range;
  path: string;
  folder: string;
  symbol: string | null;
  kind: string | null;
  language: string | null;
  score: number;
  exit: number;
  snippet: string;
}

export interface SearchResponse {
  results: Result[];
  incomplete: string[];
}

export type FolderState = 'loading' | 'indexing' | 'ready' | 'error' | 'cancelled';

export interface FolderStatus {
  uri: string;
  name: string;
  state: FolderState;
  error: string | null;
  files: number | null;
  indexedFiles: number | null;
  chunks: number | null;
  deepCoverage: number | null;
  deepFilling?: boolean;
  pending?: { paths: number; documents: number };
  model?: { name: string; version: string; path: string; indexExit: number; rerankExit: number };
}

export interface StatusResponse {
  version: string;
  settings: Record<string, unknown>;
  warnings: string[];
  folders: FolderStatus[];
}
