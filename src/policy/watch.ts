// Holds the current policy bundle and reloads it on change. An invalid reload keeps the last
// good bundle: the caller logs the 'invalid' event loudly. SIGHUP wiring belongs to the caller
// (call `reload()`).

import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { resolve } from 'node:path';
import { precompile } from './evaluate.ts';
import { loadPolicyDir, type PolicyBundle, type PolicyLoadResult, type PolicyProblem } from './loader.ts';

export interface PolicyHolderEvents {
  /** A reload produced a valid bundle (now `current`); `previous` is the one it replaced. */
  reloaded: [bundle: PolicyBundle, previous: PolicyBundle | undefined];
  /** A reload found problems; `current` is unchanged. */
  invalid: [problems: PolicyProblem[]];
  /** The file watcher failed (e.g. the folder was removed); reload() still works. */
  error: [error: Error];
}

export class PolicyHolder extends EventEmitter<PolicyHolderEvents> {
  readonly dir: string;
  private bundle?: PolicyBundle;
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  /** Debounce delay of file change events, ms. */
  debounceMs = 200;

  constructor(dir: string) {
    super();
    this.dir = resolve(dir);
  }

  /** Initial load. The caller refuses to start when `problems` is not empty. */
  load(): PolicyLoadResult {
    const result = loadPolicyDir(this.dir);
    if (result.bundle) {
      precompile(result.bundle);
      this.bundle = result.bundle;
    }
    return result;
  }

  /** The bundle in force. Throws before a successful load(). */
  get current(): PolicyBundle {
    if (!this.bundle) throw new Error(`no valid policy bundle loaded from ${this.dir}`);
    return this.bundle;
  }

  /** Reloads now: replaces `current` and emits 'reloaded', or keeps it and emits 'invalid'. */
  reload(): PolicyLoadResult {
    const result = loadPolicyDir(this.dir);
    if (result.bundle) {
      precompile(result.bundle);
      const previous = this.bundle;
      this.bundle = result.bundle;
      this.emit('reloaded', result.bundle, previous);
    } else {
      this.emit('invalid', result.problems);
    }
    return result;
  }

  /** Watches the folder (recursively) and reloads ~200 ms after the last change. */
  watch(): void {
    if (this.watcher) return;
    try {
      this.watcher = watch(this.dir, { recursive: true }, (_event, filename) => {
        // Changes inside .git (including the index, which `git status` may touch) are not
        // policy changes; checkouts and pulls also change the working files.
        const f = filename ? String(filename) : '';
        if (f === '.git' || f.startsWith('.git/')) return;
        this.schedule();
      });
      this.watcher.on('error', (err) => this.fail(err));
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      try {
        this.reload();
      } catch (err) {
        this.fail(err as Error);
      }
    }, this.debounceMs);
  }

  private fail(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  /** Stops watching. */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.watcher?.close();
    this.watcher = undefined;
  }
}
