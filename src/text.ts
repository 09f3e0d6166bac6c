/**
 * Text that came from outside (annotations, pod names, file contents) made safe to print: control
 * characters (a terminal's escape sequences among them) shown as \xNN, and at most `max`
 * characters, the rest counted. A warning never carries a 263 KB line or moves the cursor.
 */
export function printable(text: string, max = 40): string {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is matched
  const escaped = (s: string) => s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`)
  if (text.length <= max) return escaped(text)
  return `${escaped(text.slice(0, max))}... (${text.length} characters)`
}

/** A duration in seconds as people read it: 45s, 3m 20s, 2h 5m, 3d 4h. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`
}

/** Seconds from an ISO time to `now`. */
export function secondsSince(iso: string, now = Date.now()): number {
  return Math.max(0, (now - Date.parse(iso)) / 1000)
}
