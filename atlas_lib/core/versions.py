"""Versions of the rules a run's numbers depend on but its parameters do not name.

They live in ``core`` so that ``config`` and ``preflight`` can hash them without importing the layers
above (``data``'s grader pulls in sympy and math-verify); the code they version imports them from here.
"""

# The grader's rules (atlas_lib/data/answers.py, its module doc), part of every stage's hash
# (``config.Params.stage_hash``) and every run's training hash (``preflight.train_hash``): a grader change
# re-runs the baselines and the training stages on resume instead of pairing rows graded by two graders.
# 1: the stated-value grader up to cbf9dfb (undone arithmetic refused, but ``5!``, ``\binom{5}{2}``,
# ``1e3``, ``2i``, ``5 + x``, ``2**3`` credited as 5, 2, 3, 2, 5, 23 and ``\sqrt{-4}`` as 2; stage hashes
# then held no grader version). 2: f45e1c4's stricter reading of expressions, with its prose fixed (an
# exclamation mark, the article ``a``, the pronoun ``I``, a spaced ``i``/``j``).
GRADER_VERSION = 2
