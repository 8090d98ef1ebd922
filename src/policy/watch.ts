// Holds the current policy bundle and reloads it on change. An invalid reload keeps the last
// good bundle: the caller logs the 'invalid' event loudly. SIGHUP wiring belongs to the caller
// (call `reload()`).

import { EventEmitter } from 'node:events';
import { statSync, watch, type FSWatcher } from 'node:fs';
import { join, resolve } from 'node:path';
import { precompile } from './evaluate.ts';
import { listPolicyFiles, loadPolicyDir, type PolicyBundle, type PolicyLoadResult, type PolicyProblem } from './loader.ts';

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
  private poller?: NodeJS.Timeout;
  private fingerprint = '';
  /** Debounce delay of file change events, ms. */
  debounceMs = 200;
  /** Interval of the stat poll that backs up fs.watch, ms. */
  pollMs = 1000;

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

  /**
   * Watches the folder (recursively) and reloads ~200 ms after the last change. fs.watch is the
   * fast path; a stat poll backs it up, because on Linux a recursive watch loses a file that is
   * replaced by rename (editors' atomic saves, git checkout, Kubernetes ConfigMap updates).
   */
  watch(): void {
    if (this.watcher || this.poller) return;
    this.fingerprint = this.stat();
    this.poller = setInterval(() => {
      const now = this.stat();
      if (now !== this.fingerprint) this.schedule();
    }, this.pollMs);
    this.poller.unref();
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

  /** Path, inode, size and mtime of every policy file: changes whenever a file is edited or replaced. */
  private stat(): string {
    try {
      return listPolicyFiles(this.dir).map((f) => {
        const st = statSync(join(this.dir, f));
        return `${f}:${st.ino}:${st.size}:${st.mtimeMs}`;
      }).join('|');
    } catch {
      return 'unreadable';
    }
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.fingerprint = this.stat();
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
    if (this.poller) clearInterval(this.poller);
    this.poller = undefined;
    this.watcher?.close();
    this.watcher = undefined;
  }
}
