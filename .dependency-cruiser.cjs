// The layering of src/ (docs/architecture.md), checked by `npm run lint`. A layer may import its own
// folder and the layers below it, never one above: commands > ui > lab > datapath > kube, node,
// mesh > bpf > the shared modules at src/*.ts.
const LAYERS = ['commands', 'ui', 'lab', 'datapath', 'kube|node|mesh', 'bpf']
const folder = (names) => `^src/(${names})/`

const upward = LAYERS.slice(1).map((layer, j) => ({
  name: `no-upward-from-${layer.split('|')[0]}`,
  comment: `src/{${layer}} may only import the layers below it`,
  severity: 'error',
  from: {path: folder(layer)},
  to: {path: folder(LAYERS.slice(0, j + 1).join('|'))},
}))

module.exports = {
  forbidden: [
    ...upward,
    {
      name: 'siblings-one-way',
      comment: 'kube may use mesh (the profiles); node and mesh use neither of their siblings',
      severity: 'error',
      from: {path: folder('node|mesh')},
      to: {path: folder('kube|node|mesh'), pathNot: '^src/$1/'},
    },
    {
      name: 'shared-modules-are-leaves',
      comment: 'src/*.ts (errors, paths, text, exec) import nothing of ours but each other',
      severity: 'error',
      from: {path: '^src/[^/]+\\.ts$'},
      to: {path: '^src/[^/]+/'},
    },
    {
      name: 'programs-through-exec',
      comment: 'nothing runs another program except through src/exec.ts (no shell, a timeout, errors that name the tool)',
      severity: 'error',
      from: {path: '^src/', pathNot: '^src/exec\\.ts$'},
      to: {path: '^(node:)?child_process$|(^|/)node_modules/execa/'},
    },
    {name: 'no-circular', severity: 'error', from: {path: '^src/'}, to: {circular: true}},
    {name: 'no-test-code-in-src', severity: 'error', from: {path: '^src/'}, to: {path: '^test/'}},
  ],
  options: {
    doNotFollow: {path: 'node_modules'},
    tsConfig: {fileName: 'tsconfig.json'},
    tsPreCompilationDeps: true,
  },
}
