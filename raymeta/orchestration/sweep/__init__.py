"""``raymeta sweep``: held-out tasks x strategies x seeds as Ray tasks (``run.run_sweep``)."""
