import {Command, Errors} from '@oclif/core'
import {featuresTurnedOff} from '../bpf/optional.js'
import {MerbridgeError} from '../errors.js'
import {refuseNonFolder} from '../input.js'
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
    refuseBlankSettings(process.env)
    for (const name of FOLDER_VARIABLES) refuseNonFolder(name, process.env[name])
    refuseBlankArguments(this.argv)
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

/** Environment variables that name a path, an address or a folder: set but blank is a mistake. */
export const SETTING_VARIABLES = [
  'MERBRIDGE_BPFFS',
  'MERBRIDGE_CGROUP',
  'MERBRIDGE_HOST_PROC',
  'MERBRIDGE_RUN_DIR',
  'MERBRIDGE_CACHE_DIR',
  'MERBRIDGE_METRICS_ADDR',
  'MERBRIDGE_LOCK_WAIT_MS',
] as const

const FOLDER_VARIABLES = ['MERBRIDGE_RUN_DIR', 'MERBRIDGE_CACHE_DIR', 'MERBRIDGE_HOST_PROC'] as const

export function refuseBlankSettings(env: NodeJS.ProcessEnv): void {
  const blank = SETTING_VARIABLES.find((v) => env[v]?.trim() === '')
  if (blank)
    throw new MerbridgeError(`${blank} is set but empty`, {
      code: 'USAGE',
      exitCode: 2,
      suggestion: `give ${blank} a value, or unset it for its default`,
    })
}

/** An empty or blank value on the command line (`--cgroup ""`, `--bpffs=`) is never taken for the default. */
export function refuseBlankArguments(argv: readonly string[]): void {
  argv.forEach((arg, i) => {
    const inline = /^(--[\w-]+)=(.*)$/s.exec(arg)
    const prev = i > 0 ? argv[i - 1] : undefined
    const flag = inline ? inline[1] : prev?.startsWith('--') && !prev.includes('=') ? prev : undefined
    if ((inline ? (inline[2] ?? '') : arg).trim() !== '') return
    throw new MerbridgeError(flag ? `${flag} is empty` : 'an argument is empty', {
      code: 'USAGE',
      exitCode: 2,
      suggestion: flag ? `give ${flag} a value, or leave it out for its default` : 'leave the empty argument out',
    })
  })
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
