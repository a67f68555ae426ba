"""The `transferline` command (an entry point): main.py holds the app and the
pipeline commands, registry.py the registry commands, experiment.py the
experiments, common.py what they share. Importing it loads no torch, Prefect
or MLflow: each command imports what it needs when it runs."""
