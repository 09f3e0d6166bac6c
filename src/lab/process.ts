import {once} from 'node:events'
import {type ChildProcess, startProcess} from '../exec.js'

/**
 * How long the lab waits for something that should happen "soon" (a listener, a log line, a map
 * entry) before it gives up and says what it waited for: generous, so that a slow or loaded
 * machine only makes a run slower, never red. Nothing waits this long when things work.
 */
export const POLL_DEADLINE_MS = 60_000

/** A process the lab started, with its output kept for inspection. */
export class LabProcess {
  readonly child: ChildProcess
  stdout = ''
  stderr = ''
  readonly exited: Promise<number | null>

  constructor(
    readonly label: string,
    command: string,
    args: string[],
  ) {
    this.child = startProcess(command, args)
    this.child.stdout?.on('data', (d: Buffer) => (this.stdout += d.toString()))
    this.child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()))
    this.exited = once(this.child, 'exit')
      .then(([code]) => code as number | null)
      .catch(() => null)
  }

  get pid(): number | undefined {
    return this.child.pid
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  /** Stop it (only this process, by pid), waiting at most a second before SIGKILL. */
  async stop(): Promise<void> {
    if (!this.running) return
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 1000)
    await this.exited
    clearTimeout(timer)
  }

  /** Wait until its output matches (or the condition holds), or fail with what it printed. */
  async waitFor(until: RegExp | (() => boolean), what = String(until), timeoutMs = POLL_DEADLINE_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs
    const done = typeof until === 'function' ? until : () => until.test(this.stdout + this.stderr)
    while (!done()) {
      if (!this.running) throw new Error(`${this.label} exited before ${what}: ${this.stderr.trim() || this.stdout.trim().slice(-500)}`)
      if (Date.now() > deadline)
        throw new Error(
          `${this.label}: no ${what} within ${timeoutMs / 1000} s; it printed: ${(this.stdout + this.stderr).trim().slice(-500)}`,
        )
      await new Promise((r) => setTimeout(r, 20))
    }
  }
}
