import Table from 'cli-table3'
import {c} from './theme.js'

/** Past this many rows, boxes cost seconds and help nobody: aligned columns instead. */
const BOXED_ROWS = 500

// eslint-disable-next-line no-control-regex
const visible = (s: string) => s.replace(/\u001b\[[0-9;]*m/g, '').length

function renderColumns(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(visible(h), ...rows.map((r) => visible(r[i] ?? ''))))
  const line = (cells: string[]) => cells.map((cell, i) => cell + ' '.repeat((widths[i] ?? 0) - visible(cell))).join('  ').trimEnd()
  return [line(head.map((h) => c.bold(h))), ...rows.map(line)].join('\n')
}

/** A table for people: plain box characters, bold headers when colors are on. */
export function renderTable(head: string[], rows: (string | number)[][]): string {
  if (rows.length > BOXED_ROWS) return renderColumns(head, rows.map((r) => r.map(String)))
  const t = new Table({head: head.map((h) => c.bold(h)), style: {head: [], border: []}})
  for (const r of rows) t.push(r.map(String))
  return t.toString()
}
