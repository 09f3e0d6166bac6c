// Bad input never weakens the node: each case is what a careless or hostile user could type, and
// what merbridge answers (docs/bad-input.md lists them, from these tests). Every refusal is one
// line, exit 2, and leaves the node as it was.
import assert from 'node:assert/strict'
import {existsSync} from 'node:fs'
import {after, describe, it} from 'node:test'
import {SETTING_VARIABLES} from '../../src/ui/base-command.js'
import {buildSkipReason, cli, uniqueInstall} from '../helpers.js'

const install = uniqueInstall()
after(() => install.cleanup())

/** The error line of a refusal, and that nothing was installed. */
async function refused(args: string[], env: Record<string, string>, message: string): Promise<void> {
  const r = await cli(args, {...install.env, ...env})
  assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`)
  assert.deepEqual(
    r.stderr.split('\n').filter((l) => l.startsWith('Error:')),
    [`Error: ${message}`],
  )
  assert.ok(!existsSync(install.bpffs), 'nothing pinned')
}

describe('blank settings', {skip: buildSkipReason()}, () => {
  it('refuses every path variable set but empty or blank, never taking it for the default', async () => {
    for (const name of SETTING_VARIABLES)
      for (const value of ['', '  ']) await refused(['enable', '--bpffs', install.bpffs, '--pods-file', '/dev/null'], {[name]: value}, `${name} is set but empty`)
  })

  it('refuses an empty or blank flag value, inline or apart', async () => {
    await refused(['enable', '--bpffs', install.bpffs, '--cgroup', ''], {}, '--cgroup is empty')
    await refused(['enable', '--bpffs', install.bpffs, '--cgroup=  '], {}, '--cgroup is empty')
    await refused(['sync', '--bpffs', install.bpffs, '--pods-file', ' '], {}, '--pods-file is empty')
    await refused(['disable', '--bpffs='], {}, '--bpffs is empty')
  })
})
