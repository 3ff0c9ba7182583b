// Test helper: a ConfigReader with the defaults declared in package.json, as VS Code's
// `workspace.getConfiguration('mose')` would give them, plus user overrides.

import * as fs from 'node:fs';
import * as path from 'node:path';

import type { ConfigReader } from '../settings';

export function packageDefaults(): Record<string, unknown> {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
  const props = pkg.contributes.configuration.properties as Record<string, { default?: unknown }>;
  return Object.fromEntries(Object.entries(props).map(([k, v]) => [k, v.default]));
}

/** Keys relative to 'mose' (e.g. 'limit', 'server.path'). */
export function readerFor(overrides: Record<string, unknown> = {}): ConfigReader {
  const values: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(packageDefaults())) {
    values[key.slice('mose.'.length)] = value;
  }
  Object.assign(values, overrides);
  return { get: <T>(key: string) => values[key] as T | undefined };
}
