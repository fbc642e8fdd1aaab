"""`moelora study`: architectures × budgets × tasks × seeds, trained, measured and compared with paired
statistics (docs/study.md). Modules: grid (presets, budgets), data (tasks), dynamics (routing along
training), runner (cells, resume), stats (paired intervals, Holm, verdicts), report, plots, cli."""
