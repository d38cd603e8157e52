"""Meta-training on Ray Train (``ray_train``) or in-process without Ray (``local``)."""
