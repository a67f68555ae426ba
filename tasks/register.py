"""register: log the fine-tuned model to the MLflow registry as a new challenger version.

The work is `transferline.<modality>.register.run(params, paths)`; this module is
the DVC command (`python -m tasks.register`) and picks the modality.
"""

from tasks._stage import run_stage

if __name__ == "__main__":
    run_stage("register")
