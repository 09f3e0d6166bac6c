/** Errors a user can act on: a one-line message, a next step, and a stable exit code. */
export class MerbridgeError extends Error {
  readonly exitCode: number
  readonly code: string
  readonly suggestion?: string

  constructor(message: string, opts: {code?: string; exitCode?: number; suggestion?: string} = {}) {
    super(message)
    this.name = 'MerbridgeError'
    this.code = opts.code ?? 'MERBRIDGE_ERROR'
    this.exitCode = opts.exitCode ?? 1
    this.suggestion = opts.suggestion
  }
}

export class ToolNotFoundError extends MerbridgeError {
  constructor(tool: string, install: string) {
    super(`${tool} was not found on PATH`, {code: 'TOOL_NOT_FOUND', suggestion: install})
  }
}

export class ToolFailedError extends MerbridgeError {
  readonly stderr: string
  constructor(command: string, detail: string, stderr: string, suggestion?: string) {
    super(`${command} failed: ${detail}`, {code: 'TOOL_FAILED', suggestion})
    this.stderr = stderr
  }
}

/** The message and its next step on one line each, as the CLI prints them. */
export function describeError(err: unknown): {message: string; suggestion?: string} {
  if (err instanceof MerbridgeError) return {message: err.message, suggestion: err.suggestion}
  if (err instanceof Error) return {message: err.message}
  return {message: String(err)}
}

/** A value an earlier step must have produced: a bug in merbridge, said plainly, if it did not. */
export function required<T>(value: T | undefined, what: string): T {
  if (value === undefined)
    throw new MerbridgeError(`internal error: ${what} is missing`, {
      code: 'INTERNAL',
      suggestion: 'please report this with the command you ran',
    })
  return value
}
