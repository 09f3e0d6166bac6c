import {Command, Errors} from '@oclif/core'
import {MerbridgeError} from '../errors.js'
import {c} from './theme.js'

/**
 * Shared behaviour: `--json` on every command (the return value is the JSON), and errors as one
 * line plus a next step, with the error's own exit code.
 */
export abstract class BaseCommand extends Command {
  static override enableJsonFlag = true

  /** Plain JSON: oclif's colorizer takes minutes on a dump of tens of thousands of rows. */
  protected override logJson(json: unknown): void {
    process.stdout.write(JSON.stringify(json, null, 2) + '\n')
  }

  protected override async catch(err: Error & {exitCode?: number}): Promise<unknown> {
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
