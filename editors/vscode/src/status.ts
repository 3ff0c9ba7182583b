// Status bar text: indexing progress from $/progress and index state from mose.status.

import type { StatusResponse } from './protocol';

export interface StatusView {
  text: string;
  tooltip: string;
  /** The item should use the error/warning colour. */
  severity: 'ok' | 'warning' | 'error';
}

interface Running {
  title: string;
  percentage?: number;
  message?: string;
}

/** The server's work-done progress tokens in flight. */
export class ProgressTracker {
  private readonly running = new Map<string, Running>();

  begin(token: string | number, title: string, percentage?: number, message?: string): void {
    this.running.set(String(token), { title, percentage, message });
  }

  report(token: string | number, percentage?: number, message?: string): void {
    const item = this.running.get(String(token));
    if (item === undefined) {
      return;
    }
    if (percentage !== undefined) {
      item.percentage = percentage;
    }
    if (message !== undefined) {
      item.message = message;
    }
  }

  end(token: string | number): void {
    this.running.delete(String(token));
  }

  get busy(): boolean {
    return this.running.size > 0;
  }

  /** The status bar view while work runs, or undefined when none does. */
  view(): StatusView | undefined {
    const items = [...this.running.values()];
    if (items.length === 0) {
      return undefined;
    }
    const first = items[0];
    const pct = first.percentage !== undefined ? ` ${Math.round(first.percentage)}%` : '';
    const what = first.title.replace(/^mose:\s*/, '');
    const tooltip = items
      .map((i) => `${i.title}${i.percentage !== undefined ? ` (${Math.round(i.percentage)}%)` : ''}${i.message ? `: ${i.message}` : ''}`)
      .join('\n');
    return { text: `$(sync~spin) mose: ${what}${pct}`, tooltip, severity: 'ok' };
  }
}

function percent(value: number | null): string {
  return value === null ? '-' : `${Math.round(value * 100)}%`;
}

/** The status bar view of the index state (mose.status). */
export function statusView(status: StatusResponse): StatusView {
  const lines: string[] = [];
  let chunks = 0;
  let severity: StatusView['severity'] = 'ok';
  let busy = false;
  for (const f of status.folders) {
    chunks += f.chunks ?? 0;
    if (f.state === 'error') {
      severity = 'error';
      lines.push(`${f.name}: error: ${f.error ?? 'unknown error'}`);
      continue;
    }
    if (f.state === 'loading' || f.state === 'indexing') {
      busy = true;
    } else if (f.state === 'cancelled' && severity === 'ok') {
      severity = 'warning';
    }
    const files = f.files === null ? '' : `, ${f.indexedFiles ?? 0}/${f.files} files`;
    const count = f.chunks === null ? '' : `, ${f.chunks} chunks, deep ${percent(f.deepCoverage)}`;
    lines.push(`${f.name}: ${f.state}${files}${count}`);
  }
  if (status.warnings.length > 0) {
    if (severity === 'ok') {
      severity = 'warning';
    }
    lines.push('', ...status.warnings.map((w) => `⚠ ${w}`));
  }
  if (status.folders.length === 0) {
    lines.push('No workspace folder is open.');
  }
  const icon = severity === 'error' ? '$(error)' : busy ? '$(sync~spin)' : severity === 'warning' ? '$(warning)' : '$(search)';
  const text = `${icon} mose${status.folders.length > 0 && !busy && severity !== 'error' ? ` ${chunks}` : ''}`;
  return { text, tooltip: [`mose ${status.version}`, ...lines].join('\n'), severity };
}

/** Whether the state should be polled again soon (a folder is still loading or indexing). */
export function isSettling(status: StatusResponse): boolean {
  return status.folders.some((f) => f.state === 'loading' || f.state === 'indexing');
}
