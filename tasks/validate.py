"""validate: can this data train? Every problem named, in reports/validate.json; stops the run if not.

The work is `transferline.<modality>.validate.run(params, paths)`; this module is
the DVC command (`python -m tasks.validate`) and picks the modality.
"""

from tasks._stage import run_stage

if __name__ == "__main__":
    run_stage("validate")
