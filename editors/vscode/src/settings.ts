// Extension settings -> server settings (initializationOptions, workspace/configuration,
// didChangeConfiguration). The server validates values; this module only selects the keys
// that belong to the server and expands paths.

import * as path from 'node:path';

/** Reads `mose.*` settings; `vscode.WorkspaceConfiguration` for section 'mose' is one. */
export interface ConfigReader {
  get<T>(key: string): T | undefined;
}

/** Setting keys the server understands (docs/protocol.md, "Settings"). */
export const SERVER_KEYS = [
  'model',
  'indexDir',
  'threads',
  'batchSize',
  'rerankCandidates',
  'rerank',
  'backgroundDeep',
  'maxFileBytes',
  'exclude',
  'secretPatterns',
  'useGitignore',
  'debounceMs',
  'limit',
  'watcher',
] as const;

/** Keys holding paths, which may be null (= the server's default). */
const PATH_KEYS: ReadonlySet<string> = new Set(['model', 'indexDir']);

export interface PathContext {
  home: string;
  /** First workspace folder's path, for `${workspaceFolder}`. */
  workspaceFolder?: string;
}

/** Expand a leading `~` and `${workspaceFolder}` / `${userHome}` in a user-given path. */
export function expandPath(value: string, ctx: PathContext, p: path.PlatformPath = path): string {
  let out = value.trim();
  out = out.replace(/\$\{userHome\}/g, ctx.home);
  if (ctx.workspaceFolder !== undefined) {
    out = out.replace(/\$\{workspaceFolder\}/g, ctx.workspaceFolder);
  }
  if (out === '~') {
    return ctx.home;
  }
  if (out.startsWith('~/') || out.startsWith('~\\')) {
    return p.join(ctx.home, out.slice(2));
  }
  return out;
}

/**
 * The server's settings object from the `mose` configuration section. Path settings are
 * expanded and sent as null when empty (the server's default); other unset keys are left
 * out so that the server's own defaults apply.
 */
export function serverSettings(config: ConfigReader, ctx: PathContext): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    const value = config.get<unknown>(key);
    if (PATH_KEYS.has(key)) {
      out[key] = typeof value === 'string' && value.trim() !== '' ? expandPath(value, ctx) : null;
    } else if (value !== undefined && value !== null) {
      out[key] = value;
    }
  }
  return out;
}

/** `initialize`'s initializationOptions: the settings, and the opt-in to the server's
 *  `mose/*` notifications (docs/protocol.md; not a setting, the server does not echo it). */
export function initializationOptions(config: ConfigReader, ctx: PathContext): { mose: Record<string, unknown> } {
  return { mose: { ...serverSettings(config, ctx), notifications: true } };
}

/** `workspace/didChangeConfiguration` params. */
export function didChangeConfigurationParams(
  config: ConfigReader,
  ctx: PathContext,
): { settings: { mose: Record<string, unknown> } } {
  return { settings: { mose: serverSettings(config, ctx) } };
}

/**
 * Answer `workspace/configuration` items: the 'mose' section is the server settings object,
 * 'mose.<key>' one of its values; other sections are left to `fallback`.
 */
export function configurationItems(
  items: ReadonlyArray<{ section?: string }>,
  config: ConfigReader,
  ctx: PathContext,
  fallback: (index: number) => unknown,
): unknown[] {
  const settings = serverSettings(config, ctx);
  return items.map((item, index) => {
    if (item.section === 'mose') {
      return settings;
    }
    if (item.section?.startsWith('mose.')) {
      const key = item.section.slice('mose.'.length);
      return key in settings ? settings[key] : null;
    }
    return fallback(index);
  });
}

/** Whether a configuration change needs a new server process (rather than a settings push). */
export function needsRestart(affects: (section: string) => boolean): boolean {
  return affects('mose.server');
}
