"""promote: the champion/challenger gate for the version register just made.

The work is `transferline.<modality>.promote.run(params, paths)`; this module is
the DVC command (`python -m tasks.promote`) and picks the modality.
"""

from tasks._stage import run_stage

if __name__ == "__main__":
    run_stage("promote")
