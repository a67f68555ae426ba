"""split: seeded, stratified train/val/test with the label budget applied, into ${paths.split}.

The work is `transferline.<modality>.split.run(params, paths)`; this module is
the DVC command (`python -m tasks.split`) and picks the modality.
"""

from tasks._stage import run_stage

if __name__ == "__main__":
    run_stage("split")
