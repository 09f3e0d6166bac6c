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
