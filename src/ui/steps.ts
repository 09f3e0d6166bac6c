/** Run titled steps with listr2 progress (or silently for --json), stopping at the first failure. */
export interface ProgressStep<C> {
  title: string
  skip?: (ctx: C) => string | false
  run: (ctx: C) => Promise<void>
}

/** Thrown at the first step boundary after `signal` fired: the step under way finished first. */
class StepsInterrupted extends Error {
  constructor() {
    super('interrupted')
  }
}

export async function runWithProgress<C, S extends ProgressStep<C>>(
  steps: S[],
  ctx: C,
  opts: {silent: boolean; onStart?: (step: S) => void; signal?: AbortSignal},
): Promise<void> {
  const {Listr} = await import('listr2')
  const list = new Listr(
    steps.map((step) => ({
      title: step.title,
      // once interrupted, the steps not begun show as skipped: the error names the one under way
      skip: () => (opts.signal?.aborted ? 'interrupted' : (step.skip?.(ctx) ?? false)),
      task: async () => {
        opts.onStart?.(step)
        await step.run(ctx)
      },
    })),
    {
      concurrent: false,
      exitOnError: true,
      // listr2's own handler would exit(127) on Ctrl-C with nothing undone: the caller decides
      registerSignalListeners: false,
      silentRendererCondition: opts.silent,
      fallbackRendererCondition: !process.stdout.isTTY,
      rendererOptions: {collapseErrors: false},
    },
  )
  await list.run()
  if (opts.signal?.aborted) throw new StepsInterrupted()
}
