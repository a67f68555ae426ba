"""evaluate: test metrics of both models, the transfer gain, per-class scores and plots.

The work is `transferline.<modality>.evaluate.run(params, paths)`; this module is
the DVC command (`python -m tasks.evaluate`) and picks the modality.
"""

from tasks._stage import run_stage

if __name__ == "__main__":
    run_stage("evaluate")
