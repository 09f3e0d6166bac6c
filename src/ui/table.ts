import Table from 'cli-table3'
import {c} from './theme.js'

/** A table for people: plain box characters, bold headers when colors are on. */
export function renderTable(head: string[], rows: (string | number)[][]): string {
  const t = new Table({head: head.map((h) => c.bold(h)), style: {head: [], border: []}})
  for (const r of rows) t.push(r.map(String))
  return t.toString()
}
