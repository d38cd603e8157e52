"""``raymeta tune``: one new task fine-tuned by a Ray Tune population (``run.run_tune``)."""
