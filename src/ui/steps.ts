/** Run titled steps with listr2 progress (or silently for --json), stopping at the first failure. */
export interface ProgressStep<C> {
  title: string
  skip?: (ctx: C) => string | false
  run: (ctx: C) => Promise<void>
}

export async function runWithProgress<C, S extends ProgressStep<C>>(steps: S[], ctx: C, opts: {silent: boolean; onStart?: (step: S) => void}): Promise<void> {
  const {Listr} = await import('listr2')
  const list = new Listr(
    steps.map((step) => ({
      title: step.title,
      skip: () => step.skip?.(ctx) ?? false,
      task: async () => {
        opts.onStart?.(step)
        await step.run(ctx)
      },
    })),
    {
      concurrent: false,
      exitOnError: true,
      silentRendererCondition: opts.silent,
      fallbackRendererCondition: !process.stdout.isTTY,
      rendererOptions: {collapseErrors: false},
    },
  )
  await list.run()
}
