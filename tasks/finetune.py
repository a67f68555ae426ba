"""finetune: carry the pretrained weights to the target's label budget, and train the same model from scratch.

The work is `transferline.<modality>.finetune.run(params, paths)`; this module is
the DVC command (`python -m tasks.finetune`) and picks the modality; with
`distributed.nproc_per_node` > 1 it runs itself under torchrun (transferline/launch.py).
"""

from tasks._stage import run_stage
from transferline.launch import distributed_stage

if __name__ == "__main__":
    run_stage("finetune", around=distributed_stage)
