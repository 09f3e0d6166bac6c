#!/usr/bin/env node
// The stand-in baseline's --baseline-down (down CGROUP BPFFS_DIR): see baseline-up.mjs.
import {execFileSync} from 'node:child_process'
import {fileURLToPath} from 'node:url'

const bpffs = process.argv[3]
const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
execFileSync(process.execPath, [bin, 'disable', '--bpffs', bpffs], {stdio: 'inherit'})
