"""preprocess: normalise or tokenize into the tensor cache ${paths.processed}.

The work is `transferline.<modality>.preprocess.run(params, paths)`; this module is
the DVC command (`python -m tasks.preprocess`) and picks the modality.
"""

from tasks._stage import run_stage

if __name__ == "__main__":
    run_stage("preprocess")
