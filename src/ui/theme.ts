import {Chalk} from 'chalk'

/** Colors only for a terminal, and never with NO_COLOR set. */
export function makeChalk(stream: NodeJS.WriteStream = process.stdout): InstanceType<typeof Chalk> {
  const enabled = stream.isTTY && !('NO_COLOR' in process.env) && process.env.TERM !== 'dumb'
  return new Chalk({level: enabled ? 1 : 0})
}

export const c = makeChalk()

export const mark = {
  pass: c.green('✔'),
  warn: c.yellow('!'),
  fail: c.red('✖'),
  info: c.cyan('ℹ'),
  skip: c.dim('–'),
}
