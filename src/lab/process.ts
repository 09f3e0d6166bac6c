import {type ChildProcess, spawn} from 'node:child_process'
import {once} from 'node:events'

/** A process the lab started, with its output kept for inspection. */
export class LabProcess {
  readonly child: ChildProcess
  stdout = ''
  stderr = ''
  readonly exited: Promise<number | null>

  constructor(readonly label: string, command: string, args: string[]) {
    this.child = spawn(command, args, {stdio: ['ignore', 'pipe', 'pipe']})
    this.child.stdout?.on('data', (d: Buffer) => (this.stdout += d.toString()))
    this.child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()))
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null).catch(() => null)
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

  /** Wait until its output matches, or fail after the timeout with what it printed. */
  async waitFor(pattern: RegExp, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!pattern.test(this.stdout + this.stderr)) {
      if (!this.running) throw new Error(`${this.label} exited: ${this.stderr.trim() || this.stdout.trim()}`)
      if (Date.now() > deadline) throw new Error(`${this.label} did not print ${pattern}: ${(this.stdout + this.stderr).trim().slice(-500)}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
}
