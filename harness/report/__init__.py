"""Reports built from the results store (`harness.store.load`).

`build.build` loads the runs once into a `context.ReportContext` and runs every section registered in
`sections/` (one module each, `sections.register(name, order)`) in order; `render` writes the `document.Report`.
`kinds.runs_for` is the one place that maps objectives to the sections that report them.
"""
