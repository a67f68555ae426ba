"""pretrain: learn general features on the source set (supervised or self-supervised); resumes after a kill.

The work is `transferline.<modality>.pretrain.run(params, paths)`; this module is
the DVC command (`python -m tasks.pretrain`) and picks the modality; with
`distributed.nproc_per_node` > 1 it runs itself under torchrun (transferline/launch.py).
"""

from tasks._stage import run_stage
from transferline.launch import distributed_stage

if __name__ == "__main__":
    run_stage("pretrain", around=distributed_stage)
