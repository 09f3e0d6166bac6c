import type {Check} from '../datapath/doctor.js'
import {c, mark} from './theme.js'

/** The checks, then the optional kernel features apart (what each buys, or what going without costs). */
export function renderChecks(checks: Check[]): string {
  const width = Math.max(...checks.map((k) => k.title.length))
  const line = (k: Check) => {
    const head = `${mark[k.status]} ${k.title.padEnd(width)}  ${k.detail}`
    return k.remedy && k.status !== 'pass' ? `${head}\n  ${' '.repeat(width)}  ${c.dim('→ ' + k.remedy)}` : head
  }
  const optional = checks.filter((k) => k.optional)
  const lines = checks.filter((k) => !k.optional).map(line)
  if (optional.length > 0) lines.push('', c.bold('Optional kernel features'), ...optional.map(line))
  return lines.join('\n')
}

export function checksVerdict(checks: Check[]): string {
  const failed = checks.filter((k) => k.required && k.status === 'fail')
  const warned = checks.filter((k) => k.status === 'warn')
  if (failed.length > 0)
    return c.red(`This node cannot run merbridge: ${failed.length} required check${failed.length > 1 ? 's' : ''} failed.`)
  if (warned.length > 0) return c.yellow(`This node can run merbridge (${warned.length} warning${warned.length > 1 ? 's' : ''}).`)
  return c.green('This node can run merbridge.')
}
