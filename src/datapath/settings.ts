import {bpftool} from '../bpf/bpftool.js'
import {encodeSettings, encodeU32, type Settings} from '../bpf/layout.js'
import type {Installation} from './installation.js'

export async function writeSettings(inst: Installation, s: Settings): Promise<void> {
  await bpftool.batch([bpftool.mapUpdateLine(inst.map('settings'), encodeU32(0), encodeSettings(s))])
}
