import Table from 'cli-table3'
import {c} from './theme.js'

/** Past this many rows, boxes cost seconds and help nobody: aligned columns instead. */
const BOXED_ROWS = 500

// eslint-disable-next-line no-control-regex
const visible = (s: string) => (s.includes('\u001b') ? s.replace(/\u001b\[[0-9;]*m/g, '').length : s.length)

function renderColumns(head: string[], rows: string[][]): string {
  // each cell measured once: tens of thousands of rows are the case this exists for
  const lengths = rows.map((r) => r.map(visible))
  const widths = head.map((h, i) => lengths.reduce((w, l) => Math.max(w, l[i] ?? 0), visible(h)))
  const line = (cells: string[], lens: number[]) =>
    cells
      .map((cell, i) => cell + ' '.repeat((widths[i] ?? 0) - (lens[i] ?? 0)))
      .join('  ')
      .trimEnd()
  const bold = head.map((h) => c.bold(h))
  return [line(bold, head.map(visible)), ...rows.map((r, i) => line(r, lengths[i] ?? []))].join('\n')
}

/** A table for people: plain box characters, bold headers when colors are on. */
export function renderTable(head: string[], rows: (string | number)[][]): string {
  if (rows.length > BOXED_ROWS)
    return renderColumns(
      head,
      rows.map((r) => r.map(String)),
    )
  const t = new Table({head: head.map((h) => c.bold(h)), style: {head: [], border: []}})
  for (const r of rows) t.push(r.map(String))
  return t.toString()
}
