// Where the `mose` executable is: the `mose.server.path` setting, the workspace's virtual
// environment, or PATH. Pure: the file system is reached through `isExecutable`.

import * as path from 'node:path';

import { expandPath } from './settings';

// mose is installed from a clone of its repository (or a wheel built from it): it is not on
// the package index. The placeholder path is the clone's folder.
export const INSTALL_COMMAND = 'pipx install /path/to/mose';

export interface ResolveContext {
  platform: string; // process.platform
  env: Record<string, string | undefined>;
  home: string;
  /** Workspace folder paths, in order. */
  folders: readonly string[];
  isExecutable(file: string): boolean;
}

export type Resolution =
  | { ok: true; command: string; source: 'setting' | 'venv' | 'path' }
  | { ok: false; message: string; tried: string[] };

function pathApi(platform: string): path.PlatformPath {
  return platform === 'win32' ? path.win32 : path.posix;
}

function envValue(env: Record<string, string | undefined>, name: string, platform: string): string | undefined {
  if (platform !== 'win32') {
    return env[name];
  }
  const key = Object.keys(env).find((k) => k.toUpperCase() === name.toUpperCase());
  return key === undefined ? undefined : env[key];
}

/** The virtual-environment executables tried in a folder, best first. */
export function venvCandidates(folder: string, platform: string): string[] {
  const p = pathApi(platform);
  if (platform === 'win32') {
    return ['.venv', 'venv'].map((v) => p.join(folder, v, 'Scripts', 'mose.exe'));
  }
  return ['.venv', 'venv'].map((v) => p.join(folder, v, 'bin', 'mose'));
}

/** Search PATH (and PATHEXT on Windows) for `name`. */
export function findOnPath(name: string, ctx: ResolveContext, tried: string[] = []): string | undefined {
  const p = pathApi(ctx.platform);
  const dirs = (envValue(ctx.env, 'PATH', ctx.platform) ?? '').split(p.delimiter).filter((d) => d !== '');
  const exts =
    ctx.platform === 'win32' && p.extname(name) === ''
      ? (envValue(ctx.env, 'PATHEXT', ctx.platform) ?? '.EXE;.CMD;.BAT').split(';').filter((e) => e !== '')
      : [''];
  for (const dir of dirs) {
    for (const ext of exts) {
      const file = p.join(dir, name + ext.toLowerCase());
      tried.push(file);
      if (ctx.isExecutable(file)) {
        return file;
      }
    }
  }
  return undefined;
}

/** Find the server executable; when it is missing, a message that says how to install it. */
export function resolveServer(configured: string | undefined, ctx: ResolveContext): Resolution {
  const p = pathApi(ctx.platform);
  const tried: string[] = [];
  const setting = (configured ?? '').trim();
  if (setting !== '') {
    const value = expandPath(setting, { home: ctx.home, workspaceFolder: ctx.folders[0] }, p);
    const hasDir = value.includes('/') || (ctx.platform === 'win32' && value.includes('\\'));
    if (!hasDir) {
      const found = findOnPath(value, ctx, tried);
      if (found !== undefined) {
        return { ok: true, command: found, source: 'setting' };
      }
    } else {
      const file = p.isAbsolute(value) || ctx.folders.length === 0 ? value : p.resolve(ctx.folders[0], value);
      tried.push(file);
      if (ctx.isExecutable(file)) {
        return { ok: true, command: file, source: 'setting' };
      }
    }
    return {
      ok: false,
      tried,
      message:
        `The mose server '${setting}' (setting mose.server.path) is not an executable file. ` +
        `Fix the setting, or clear it to use the workspace's virtual environment or PATH.`,
    };
  }
  for (const folder of ctx.folders) {
    for (const file of venvCandidates(folder, ctx.platform)) {
      tried.push(file);
      if (ctx.isExecutable(file)) {
        return { ok: true, command: file, source: 'venv' };
      }
    }
  }
  const found = findOnPath('mose', ctx, tried);
  if (found !== undefined) {
    return { ok: true, command: found, source: 'path' };
  }
  return {
    ok: false,
    tried,
    message:
      `The mose server was not found on PATH or in the workspace's virtual environment. ` +
      `Install it from a clone of the mose repository with '${INSTALL_COMMAND}' (or 'uv tool install /path/to/mose', or 'pip install /path/to/mose' into the workspace's .venv), or set mose.server.path.`,
  };
}

/** Arguments after the executable. */
export function serverArgs(extra: readonly string[] | undefined): string[] {
  return ['serve', ...(extra ?? [])];
}
