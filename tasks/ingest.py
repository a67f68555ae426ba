"""ingest: read the source and target sets into ${paths.raw} (built-in pinned artifacts or the user's folder/file).

The work is `transferline.<modality>.ingest.run(params, paths)`; this module is
the DVC command (`python -m tasks.ingest`) and picks the modality.
"""

from tasks._stage import run_stage

if __name__ == "__main__":
    run_stage("ingest")
