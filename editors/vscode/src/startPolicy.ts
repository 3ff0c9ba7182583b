// When the extension starts the server: at start-up only for folders that are projects (a
// git repository, a .moseignore, or a folder mose has indexed already); otherwise on the first
// mose command. Pure: the file system is reached through `exists`.

import { createHash } from 'node:crypto';
import * as path from 'node:path';

export interface IndexLocationContext {
  platform: string; // process.platform
  env: Record<string, string | undefined>;
  home: string;
  /** The `mose.indexDir` setting, expanded (null/empty: the per-user cache). */
  indexDir?: string | null;
}

function pathApi(platform: string): path.PlatformPath {
  return platform === 'win32' ? path.win32 : path.posix;
}

/** The per-user cache folder mose keeps indexes in (platformdirs' user cache dir + 'mose'). */
export function userCacheDir(ctx: IndexLocationContext): string {
  const p = pathApi(ctx.platform);
  if (ctx.platform === 'win32') {
    return p.join(ctx.env.LOCALAPPDATA ?? p.join(ctx.home, 'AppData', 'Local'), 'mose', 'Cache');
  }
  if (ctx.platform === 'darwin') {
    return p.join(ctx.home, 'Library', 'Caches', 'mose');
  }
  const xdg = ctx.env.XDG_CACHE_HOME;
  return p.join(xdg !== undefined && xdg.trim() !== '' ? xdg : p.join(ctx.home, '.cache'), 'mose');
}

/** `<name>-<hash12>`: the index folder name of a workspace folder (mose_lsp.store.paths). */
export function indexFolderName(folder: string, platform: string): string {
  const p = pathApi(platform);
  const digest = createHash('sha256').update(folder, 'utf8').digest('hex').slice(0, 12);
  const base = p.basename(folder);
  const name = base.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[._]+|[._]+$/g, '').slice(0, 40) || 'root';
  return `${name}-${digest}`;
}

/** Where the server keeps a workspace folder's index. */
export function indexPath(folder: string, ctx: IndexLocationContext): string {
  const p = pathApi(ctx.platform);
  const parent = ctx.indexDir ? ctx.indexDir : p.join(userCacheDir(ctx), 'indexes');
  return p.join(parent, indexFolderName(folder, ctx.platform));
}

export const PROJECT_MARKERS = ['.git', '.moseignore'] as const;
const DB_NAME = 'store.sqlite3';

/** Whether a folder is a project worth indexing at start-up: a repository, a .moseignore, or
 *  an index mose built before. */
export function isProject(folder: string, ctx: IndexLocationContext, exists: (file: string) => boolean): boolean {
  const p = pathApi(ctx.platform);
  return PROJECT_MARKERS.some((m) => exists(p.join(folder, m))) || exists(p.join(indexPath(folder, ctx), DB_NAME));
}

/** Whether to start the server at start-up for these folders (else on the first command). */
export function startAtStartup(folders: readonly string[], ctx: IndexLocationContext, exists: (file: string) => boolean): boolean {
  return folders.some((f) => isProject(f, ctx, exists));
}
