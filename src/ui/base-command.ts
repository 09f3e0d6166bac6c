import {Command, Errors} from '@oclif/core'
import {featuresTurnedOff} from '../bpf/optional.js'
import {MerbridgeError} from '../errors.js'
import {c} from './theme.js'

/**
 * Shared behaviour: `--json` on every command (the return value is the JSON), and errors as one
 * line plus a next step, with the error's own exit code.
 */
export abstract class BaseCommand extends Command {
  static override enableJsonFlag = true

  /** Settings every command reads from the environment, refused before the command touches anything. */
  override async init(): Promise<void> {
    await super.init()
    featuresTurnedOff()
  }

  /** Plain JSON: oclif's colorizer takes minutes on a dump of tens of thousands of rows. */
  protected override logJson(json: unknown): void {
    process.stdout.write(JSON.stringify(json, null, 2) + '\n')
  }

  protected override async catch(err: Error & {exitCode?: number}): Promise<unknown> {
    const usage = usageError(err, this.id ?? '')
    if (usage) return this.catch(usage)
    if (err instanceof MerbridgeError) {
      process.exitCode = err.exitCode
      if (this.jsonEnabled()) {
        this.logJson({error: {code: err.code, message: err.message, suggestion: err.suggestion}})
      } else {
        process.stderr.write(`${c.red('Error:')} ${err.message}\n`)
        if (err.suggestion) process.stderr.write(`${c.dim('  → ' + err.suggestion)}\n`)
      }
      throw new Errors.ExitError(err.exitCode)
    }
    return super.catch(err)
  }
}

/**
 * oclif's flag and argument errors (unknown flag, bad value, missing value) as merbridge's usage
 * error: one line, exit 2, and under --json the same {error} shape as every other error, never
 * the parser's internals.
 */
export function usageError(err: unknown, command: string): MerbridgeError | undefined {
  if (err instanceof MerbridgeError || !(err instanceof Errors.CLIError)) return undefined
  const parse = (err as {parse?: unknown}).parse
  if (parse === undefined && (err as {oclif?: {exit?: number}}).oclif?.exit !== 2) return undefined
  const message = err.message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !/^See more help with --help$/i.test(l))
    .join(': ')
    .replace(/^Parsing (--[\w-]+):? ?/, '$1: ')
  return new MerbridgeError(message, {code: 'USAGE', exitCode: 2, suggestion: `see \`merbridge ${command}${command ? ' ' : ''}--help\``})
}
